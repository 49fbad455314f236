"""What the flows' parameters share, so the Prefect UI's run form reads naturally.

Each flow takes its parameters as top-level arguments, described in its docstring's `Args:`
section (Prefect shows those descriptions under each field), so
`prefect deployment run NAME --param current_path=...` works as a user expects.
"""

from __future__ import annotations

from pydantic.json_schema import SkipJsonSchema

Empty = SkipJsonSchema[None]
"""An optional parameter's "not given": `None` in Python, an empty field in the UI's form.

`str | Empty` keeps the form's field a plain string box; `str | None` would show a choice of
type with "None" in it."""
