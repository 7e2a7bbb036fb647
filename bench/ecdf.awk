# ecdf.awk: empirical CDFs of the stop samples, for bench/plot.gp.
#
#   sort -k1,1 -k2,2 -k3,3g stop-samples.txt |
#       awk -f bench/ecdf.awk -v want=idle-stop -v raw=raw.txt > idle.dat
#
# raw: the drivers' lines, read for peers that do not join (joins=0).
# Input: "<peer> <scenario>/<config> <us>" lines, sorted by series, then
# value. Prints, for every series of scenario `want`, one gnuplot data block
# (two blank lines apart): a quoted title line, then "<us> <fraction <= us>".
# bench.sh counts the blocks by their title lines (grep -c "^\"").
BEGIN {
	while (raw != "" && (getline line < raw) > 0) {
		if (match(line, /peer=[^ ]+/))
			p = substr(line, RSTART + 5, RLENGTH - 5)
		if (line ~ / joins=0/) nojoin[p] = 1
	}
}
{
	split($2, sc, "/")
	if (sc[1] != want) next
	s = $1 " " $2
	if (!(s in n)) order[++ns] = s
	v[s, ++n[s]] = $3
}
END {
	# ctpool's series first, then the others in input order
	for (i = 1; i <= ns; i++)
		if (order[i] ~ /^ctpool /) sorted[++m] = order[i]
	for (i = 1; i <= ns; i++)
		if (order[i] !~ /^ctpool /) sorted[++m] = order[i]
	for (i = 1; i <= m; i++) {
		s = sorted[i]; split(s, f, " "); split(f[2], sc, "/")
		title = f[1]
		if (want == "busy-stop") title = title " (" sc[2] ")"
		if (f[1] in nojoin) title = title ", threads not joined"
		if (i > 1) printf "\n\n"
		printf "\"%s\"\n", title
		for (k = 1; k <= n[s]; k++)
			printf "%s %.6f\n", v[s, k], k / n[s]
	}
}
