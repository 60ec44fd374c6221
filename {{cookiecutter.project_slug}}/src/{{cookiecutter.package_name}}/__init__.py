"""{{ cookiecutter.project_name }}: a Lightning project whose every hook maps to a line of a plain PyTorch loop."""
