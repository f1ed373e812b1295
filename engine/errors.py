"""The one exception type whose message is meant for the user."""


class UserError(Exception):
    """A problem the user can fix; the message is one sentence saying what happened and what to do."""
