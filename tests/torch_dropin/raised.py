"""What a call raises, as a comparable value: the drop-in's errors are checked
against torch's, type and message."""


def raised(fn):
    """``(type, message)`` of the exception ``fn()`` raises, or None."""
    try:
        fn()
    except Exception as exc:       # noqa: BLE001 (comparing what each raises)
        return type(exc), str(exc)
    return None
