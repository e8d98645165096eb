# Sourced by the build-*.sh scripts that build a pinned Go release once and cache it:
# the stamp, the one-build-at-a-time lock and the temporary build directory they share.
# The caller sets DIR (the cache directory), STAMP_INPUTS (the pinned files: go.mod,
# go.sum, overlays) and defines `present` (true when every cached file exists).

# The stamp covers the pins, this file and the calling script: any of them changing
# means a rebuild.
cache_stamp() {
	cat "${STAMP_INPUTS[@]}" "${BASH_SOURCE[0]}" "$0" | sha256sum | cut -d' ' -f1
}

cache_fresh() {
	present || return 1
	[[ -f "$DIR/.stamp" && "$(<"$DIR/.stamp")" == "$(cache_stamp)" ]]
}

# cache_enter WHAT: prints DIR and exits when the cache is fresh; otherwise waits for
# the build lock (parallel `make` runs, several test binaries), checks again, and leaves
# TMP (removed on exit) and the Go settings of a reproducible build.
cache_enter() {
	local what="$1" name
	name="$(basename "$0")"
	if cache_fresh; then
		echo "$DIR"
		exit 0
	fi
	command -v go >/dev/null || { echo "$name: go is required to build $what" >&2; exit 1; }
	mkdir -p "$DIR"
	exec 9>"$DIR/.lock"
	flock 9
	if cache_fresh; then
		echo "$DIR"
		exit 0
	fi
	TMP="$(mktemp -d "$DIR/.build.XXXXXX")"
	trap 'rm -rf "$TMP"' EXIT
	export CGO_ENABLED=0
	# -mod=readonly: go.mod/go.sum in the checkout are the pin; never rewritten here.
	export GOFLAGS="-mod=readonly ${GOFLAGS:-}"
	CACHE_START=$SECONDS
	echo "$name: building $what into $DIR" >&2
}

# cache_done: stamps the cache (its contents are in place) and prints DIR last.
cache_done() {
	cache_stamp >"$DIR/.stamp"
	echo "$(basename "$0"): built in $((SECONDS - CACHE_START))s" >&2
	echo "$DIR"
}
