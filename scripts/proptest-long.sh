#!/usr/bin/env bash
# A longer run of every property test (parsers of hostile input: SFTP parser,
# recording reader, tunnel packet filter and parsers, config reader) than CI's
# 256 cases each. PROPTEST_CASES sets the count (default 20000 here).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
export PROPTEST_CASES="${PROPTEST_CASES:-20000}"
echo "proptest: $PROPTEST_CASES cases per property"
cargo test --release --lib -- proptests config::validate::limits
cargo test --release --test recordings_props
