"""sedaug: latent and adversarial data augmentations for semi-supervised sound event detection."""

__version__ = "0.2.0"


def main() -> None:
    """The `sedaug` command. Its modules load here, where a Ctrl-C is one line too: the commands' own handler
    (sedaug.cli.user_errors) is not in place for the first half second; it says what that handler says."""
    import sys

    try:
        from sedaug.cli import main as command

        command()
    except KeyboardInterrupt:
        from sedaug.errors import INTERRUPTED

        print(f"error: {INTERRUPTED}", file=sys.stderr)
        raise SystemExit(130) from None
