"""`detrigger-guard audit SET ...`: the model audit (training.audit) of any model set."""

from __future__ import annotations

import click


@click.command(
    context_settings={"ignore_unknown_options": True, "help_option_names": []},
    add_help_option=False,
)
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
def audit(args: tuple[str, ...]) -> None:
    """Synthesise each class's smallest trigger (Neural Cleanse), flag a backdoored target
    class, and repair the target by unlearning or pruning into SET-repaired. The options are
    the audit's own: `detrigger-guard audit --help` lists them (e.g. --model-set models/mnist
    --dataset mnist). Needs the training extra: pip install 'detrigger-guard[train]'."""
    try:
        from training.audit.__main__ import main as run_audit
    except ImportError as exc:  # torch is not a runtime dependency of the guard
        raise click.ClickException(
            f"the audit needs the training extra ({exc}): pip install 'detrigger-guard[train]'"
        ) from exc
    run_audit(list(args))
