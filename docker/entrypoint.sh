#!/bin/sh
# Entry point of the FAISSx image (also runs outside a container: tests/test_docker.py).
#
#   (no arguments) or --flags...   faissx serve [--flags...]   (--version, --help: faissx's own)
#   serve|health|status|indexes|snapshot|backup|restore|plugins|keys ...   faissx <that> ...
#   anything else                  run it as given (e.g. sh)
#
# Settings come from FAISSX_* environment variables (FAISSX_DATA_DIR, FAISSX_AUTH_FILE,
# FAISSX_ENABLE_AUTH, FAISSX_PORT, ...; `faissx serve --help` lists them all). In a container
# the server listens on every interface (FAISSX_BIND_ADDRESS=0.0.0.0) unless told otherwise; the
# server itself warns when that happens without authentication or encryption.
set -eu

: "${FAISSX_BIND_ADDRESS:=0.0.0.0}"
: "${FAISSX_PORT:=45678}"
export FAISSX_BIND_ADDRESS FAISSX_PORT

fail() { echo "faissx-entrypoint: $*" >&2; exit 64; }

check_serve() {
    if [ -n "${FAISSX_DATA_DIR:-}" ]; then
        mkdir -p "$FAISSX_DATA_DIR" 2>/dev/null || true
        [ -d "$FAISSX_DATA_DIR" ] && [ -w "$FAISSX_DATA_DIR" ] ||
            fail "FAISSX_DATA_DIR=$FAISSX_DATA_DIR is not a directory user $(id -u) can write" \
                 "(on the host: chown $(id -u) <the mounted directory>)"
    fi
    if [ -n "${FAISSX_AUTH_FILE:-}" ] && [ ! -r "$FAISSX_AUTH_FILE" ]; then
        fail "FAISSX_AUTH_FILE=$FAISSX_AUTH_FILE cannot be read by user $(id -u)"
    fi
}

case "${1:-}" in
    --version|--help) exec faissx "$@" ;;
esac
if [ "$#" -eq 0 ] || [ "${1#-}" != "$1" ]; then
    set -- serve "$@"
fi

case "$1" in
    serve|run)
        shift
        check_serve
        exec faissx serve "$@" ;;
    health|status|indexes|snapshot)
        # probes from inside the container reach the server on loopback
        : "${FAISSX_SERVER:=tcp://127.0.0.1:${FAISSX_PORT}}"
        export FAISSX_SERVER
        exec faissx "$@" ;;
    backup|restore|plugins|keys)
        exec faissx "$@" ;;
    *)
        exec "$@" ;;
esac
