#!/usr/bin/env bash
# Soak: runs the stress suites (test_stress, test_hostile,
# test_regress_stress) over and over in
# the perturbed build, a fresh seed each round, alternating unpinned and
# pinned to one CPU, for MINUTES (default 20). Stops at the first failure and
# prints its seed (CTP_PERTURB_SEED=N replays the schedule choices; thread
# timing still varies). Not part of CI: it takes as long as you give it.
# Usage: scripts/soak.sh [MINUTES]
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/deps.sh
minutes=${1:-20}
if [[ ! -f build-perturb/build.ninja ]]; then
	meson setup build-perturb --buildtype=release -Dperturb=true \
		-Dexamples=disabled >/dev/null
fi
ninja -C build-perturb >/dev/null

end=$((SECONDS + minutes * 60))
rounds=0
seed=${CTP_PERTURB_SEED:-$RANDOM}
while ((SECONDS < end)); do
	pin=()
	((rounds % 2)) && pin=(taskset -c 0)
	for t in test_stress test_hostile test_regress_stress; do
		[[ -x build-perturb/tests/$t ]] || continue
		if ! CTP_PERTURB_SEED=$seed "${pin[@]}" \
			"build-perturb/tests/$t" >"/tmp/soak.$$.log" 2>&1; then
			tail -40 "/tmp/soak.$$.log"
			echo "soak: FAILED in $t, round $rounds," \
				"CTP_PERTURB_SEED=$seed ${pin[*]}"
			exit 1
		fi
	done
	rounds=$((rounds + 1))
	seed=$((seed + 1))
done
rm -f "/tmp/soak.$$.log"
echo "soak: $rounds rounds of the stress suites in $minutes min, 0 failures"
