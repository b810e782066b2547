"""`detrigger-guard`: one command group; each command lives in its own module and is added here.

detrigger-guard fit --target model.onnx --data DIR --out DIR
detrigger-guard calibrate SET --data DIR
detrigger-guard check SET
detrigger-guard serve SET...
detrigger-guard classify FILE... --url URL
detrigger-guard audit --model-set SET --dataset NAME
"""

from __future__ import annotations

import click

from cli.audit import audit
from cli.check import check
from cli.classify import classify
from cli.fit import calibrate, fit
from cli.serve import serve


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="detrigger-guard")
def main() -> None:
    """Guard an ONNX image classifier against backdoor triggers."""


main.add_command(fit)
main.add_command(calibrate)
main.add_command(check)
main.add_command(audit)
main.add_command(serve)
main.add_command(classify)


if __name__ == "__main__":  # torchrun -m cli.main fit ...
    main()
