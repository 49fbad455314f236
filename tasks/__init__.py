"""The work behind the flows: one module per tool it speaks to, plain functions as tasks."""
