"""The clients the suite knows: how to run each driver and whether it is installed."""
from __future__ import annotations

import importlib.util
import os
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

HERE = Path(__file__).resolve().parent
CLIENTS_DIR = HERE / "clients"
JAVA_JAR = Path("/usr/share/java/amqp-client.jar")


@dataclass(frozen=True)
class Client:
    name: str
    language: str
    library: str
    command: tuple[str, ...]        # scenario name and URL are appended
    missing: Callable[[], str | None]  # why it cannot run, or None when installed
    only_own_scenarios: bool = False   # runs only scenarios written for it (Celery)
    # scenario -> the client library's own bug that makes it fail on every broker (shown as xfail)
    known_failures: tuple[tuple[str, str], ...] = ()

    def not_installed(self) -> str | None:
        return self.missing()

    def known_failure(self, scenario: str) -> str | None:
        return dict(self.known_failures).get(scenario)


def python_module(*modules: str) -> Callable[[], str | None]:
    def check() -> str | None:
        for module in modules:
            if importlib.util.find_spec(module) is None:
                return f"python module {module} missing"
        return None
    return check


def node_package(package: str) -> Callable[[], str | None]:
    def check() -> str | None:
        if not shutil.which("node"):
            return "node missing"
        if not (CLIENTS_DIR / "node" / "node_modules" / package / "package.json").exists():
            return f"npm package {package} missing (run interop/setup.sh)"
        return None
    return check


def files(*paths: Path, tools: tuple[str, ...] = ()) -> Callable[[], str | None]:
    def check() -> str | None:
        for tool in tools:
            if not shutil.which(tool):
                return f"{tool} missing"
        for path in paths:
            if not path.exists():
                return f"{path} missing (run interop/setup.sh)"
        return None
    return check


def ruby_gem(gem: str, driver: Path) -> Callable[[], str | None]:
    def check() -> str | None:
        if not shutil.which("ruby"):
            return "ruby missing"
        if not driver.exists():
            return f"{driver} missing"
        for base in ("/usr/lib/ruby/vendor_ruby", "/usr/share/rubygems-integration"):
            if any(Path(base).glob(f"**/{gem}.rb")) or any(Path(base).glob(f"**/{gem}-*")):
                return None
        return f"ruby gem {gem} missing"
    return check


def py(module: str) -> tuple[str, ...]:
    return (sys.executable, "-m", f"interop.clients.python.{module}")


PHP_AMQPLIB = Path("/usr/share/php/PhpAmqpLib")

# Bugs of the client libraries themselves, seen on RabbitMQ as well: the cell shows xfail.
PIKA_BUGS = (("headers-read", "pika 1.x decodes a 32-bit float header ('f') as an integer"),)

CLIENTS: list[Client] = [
    Client("pika", "python", "pika BlockingConnection", py("pika_blocking"), python_module("pika"),
           known_failures=PIKA_BUGS),
    Client("pika-asyncio", "python", "pika AsyncioConnection", py("pika_asyncio"), python_module("pika"),
           known_failures=PIKA_BUGS),
    Client("aio-pika", "python", "aio-pika", py("aio_pika_driver"), python_module("aio_pika")),
    Client("aiormq", "python", "aiormq", py("aiormq_driver"), python_module("aiormq")),
    Client("py-amqp", "python", "amqp (py-amqp)", py("py_amqp"), python_module("amqp")),
    Client("kombu", "python", "kombu", py("kombu_driver"), python_module("kombu")),
    Client("celery", "python", "Celery worker, rpc:// backend", py("celery_driver"),
           python_module("celery"), only_own_scenarios=True),
    Client("amqplib", "node", "amqplib (npm)", ("node", str(CLIENTS_DIR / "node" / "amqplib.js")),
           node_package("amqplib")),
    Client("amqp-client.js", "node", "@cloudamqp/amqp-client (npm)",
           ("node", str(CLIENTS_DIR / "node" / "amqp-client.js")), node_package("@cloudamqp/amqp-client"),
           known_failures=(("headers-read", "it decodes a decimal header into a JS number"),)),
    Client("go-amqp091", "go", "amqp091-go (Debian)", (str(CLIENTS_DIR / "go" / "driver"),),
           files(CLIENTS_DIR / "go" / "driver")),
    Client("java", "java", "RabbitMQ Java client (Debian)",
           ("java", "-cp", f"{CLIENTS_DIR / 'java' / 'classes'}:{JAVA_JAR}:/usr/share/java/slf4j-api.jar:/usr/share/java/slf4j-nop.jar",
            "Driver"),
           files(JAVA_JAR, CLIENTS_DIR / "java" / "classes" / "Driver.class", tools=("java",))),
    Client("bunny", "ruby", "bunny (Debian ruby-bunny)", ("ruby", str(CLIENTS_DIR / "ruby" / "driver.rb")),
           ruby_gem("bunny", CLIENTS_DIR / "ruby" / "driver.rb"),
           known_failures=(("headers-read", "amq-protocol 2.3.2 decodes a signed 8-bit int ('b') as unsigned "
                                            "and a 32-bit float ('f') in the wrong byte order"),)),
    Client("php-amqplib", "php", "php-amqplib (Debian)", ("php", str(CLIENTS_DIR / "php" / "driver.php")),
           files(PHP_AMQPLIB, CLIENTS_DIR / "php" / "driver.php", tools=("php",))),
    Client("amqp-tools", "c", "rabbitmq-c amqp-tools (Debian)",
           (sys.executable, str(CLIENTS_DIR / "amqp-tools" / "driver.py")),
           files(CLIENTS_DIR / "amqp-tools" / "driver.py", tools=("amqp-publish", "amqp-get", "amqp-declare-queue"))),
]

BY_NAME = {c.name: c for c in CLIENTS}


def driver_env() -> dict[str, str]:
    """Environment for driver processes: the repo on PYTHONPATH so `interop` imports."""
    env = dict(os.environ)
    root = str(HERE.parent)
    env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    return env
