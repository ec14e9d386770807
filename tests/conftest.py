pytest_plugins = [
    "tests.fixtures.postgres",
    "tests.fixtures.model",
    "tests.fixtures.appliance",
    "tests.fixtures.redis",
    "tests.fixtures.s3",
]
