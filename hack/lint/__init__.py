"""Security linters (checkov, hadolint) kept in their own venv under the project's cache."""
