#!/usr/bin/env bash
# The project's test command (the README's second line): lint, then every test,
# then the real-kernel acceptance labs (ci/labs.sh; skipped without linux.uml).
set -euo pipefail
cd "$(dirname "$0")/.."
cargo fmt --check
cargo clippy --all-targets --quiet -- -D warnings
cargo test --quiet 2>&1
ci/labs.sh
