"""Form deliveries: the form's names (fields), Jotform's payloads and API (jotform), SSRF-safe
downloads, and deliveries (a delivery -> a stored submission -> each image identified).

May import: errors, storage, submissions, identification.identify; never api."""
