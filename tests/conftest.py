pytest_plugins = [
    "tests.fixtures.postgres",
    "tests.fixtures.model",
    "tests.fixtures.appliance",
    "tests.fixtures.uploads_server",
    "tests.fixtures.redis",
    "tests.fixtures.tls",
    "tests.fixtures.s3",
    "tests.fixtures.prometheus",
    "tests.fixtures.admin",
]
