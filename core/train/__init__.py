"""Training: settings (`config`), data (`data`), model setup (`setup`), the loop (`loop`), resumable
state (`state`) and the CLI (`python -m core.train`). Never imports the serving engine."""
