"""What an embedded gateway (no Redis) imports: redis-py only when Redis is configured."""

import subprocess
import sys

from support import ROOT

STARTS_EMBEDDED = """
import asyncio, sys
from gateway.http import create_app
from gateway.settings import load_settings

async def main():
    app = create_app(load_settings("gateway.yaml"))
    async with app.router.lifespan_context(app):
        print(sorted({name.split(".")[0] for name in sys.modules} & {"redis", "confluent_kafka",
                                                                    "mlflow", "ray"}))

asyncio.run(main())
"""


def test_an_embedded_gateway_never_imports_redis_or_the_optional_extras() -> None:
    """redis-py adds about 22 MB to each worker: the bundled config, served as the README's
    serve command does, runs without it (and without the optional extras' clients)."""
    result = subprocess.run(
        [sys.executable, "-c", STARTS_EMBEDDED], cwd=ROOT, capture_output=True, text=True,
        timeout=60,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[-1] == "[]"
