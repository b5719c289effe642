def pytest_configure(config):
    # Run each benchmark once as a smoke test unless timing is asked for (--benchmark-enable).
    if not config.getoption("benchmark_enable", False):
        config.option.benchmark_disable = True
