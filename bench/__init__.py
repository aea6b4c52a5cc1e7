"""The benchmark: mq side by side with RabbitMQ, driven by one Go load generator.

`python -m bench --help` for usage; bench/README.md for what each scenario measures.
"""
