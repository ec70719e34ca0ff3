"""Code several stages (and the synthetic program) use: each module named for what it does.

A stage imports from here, never another stage's module; nothing here imports a stage.
"""
