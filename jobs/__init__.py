"""jobs: runnable entry points behind the `trufor-scan` command."""
