"""`raiox`: main (the root command and serve/identify/migrate/demo), one module per command
group (model, catalog, submissions, sync), and common (what they share). Each command opens
the components once (common.with_components); heavy imports happen inside the commands.

May import: everything below it; the command modules import common, never each other."""
