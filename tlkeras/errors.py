"""User-facing errors. The CLI prints any `TlkerasError` as one line and exits with code 2."""


class TlkerasError(Exception):
    """A problem the user can fix; the message says how."""


class WeightsUnavailableError(TlkerasError):
    """Pre-trained weights are not on disk and cannot be downloaded; the message names the fix."""


class TermsNotAcceptedError(TlkerasError):
    """An opt-in backbone's licence terms must be accepted before its weights are fetched."""
