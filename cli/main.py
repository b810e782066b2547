"""`detrigger-guard`: one command group; each command lives in its own module and is added here.

detrigger-guard fit --target model.onnx --data DIR --out DIR
detrigger-guard calibrate SET --data DIR
detrigger-guard check SET
"""

from __future__ import annotations

import click

from cli.check import check
from cli.fit import calibrate, fit


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="detrigger-guard")
def main() -> None:
    """Guard an ONNX image classifier against backdoor triggers."""


main.add_command(fit)
main.add_command(calibrate)
main.add_command(check)


if __name__ == "__main__":  # torchrun -m cli.main fit ...
    main()
