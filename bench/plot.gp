# plot.gp: empirical CDF of the stop latencies (bench/ecdf.awk makes the data).
#   gnuplot -e "term='pngcairo'; out='stop-latency.png'; idle='idle.dat'; \
#               nidle=6; busy='busy.dat'; nbusy=8" bench/plot.gp
if (!exists("term")) term = 'pngcairo'
if (term eq 'pngcairo') {
	set terminal pngcairo size 1100,1000 font 'sans,10' noenhanced
} else {
	set terminal png size 1100,1000 noenhanced
}
set output out
set multiplot layout 2,1
set logscale x
set format x '%g'
set xlabel 'stop latency (microseconds, log scale)'
set ylabel 'fraction of stops taking <= x'
set yrange [0:1.02]
set grid xtics ytics mxtics
set key outside right top
set style data steps

set title 'Idle pool: shutdown() of 4 parked workers (all reps pooled)'
if (nidle > 0) {
	plot for [i=0:nidle-1] idle index i using 1:2 with steps lw 2 title columnheader(1)
} else {
	set label 1 'no samples' at graph 0.5, 0.5 center
	plot 2 notitle
	unset label 1
}

set title 'Busy pool: stop 4 workers blocked in a job (ctpool: its cancellable waits; peers: 10 ms flag loop)'
if (nbusy > 0) {
	plot for [i=0:nbusy-1] busy index i using 1:2 with steps lw 2 title columnheader(1)
} else {
	set label 1 'no samples' at graph 0.5, 0.5 center
	plot 2 notitle
}
unset multiplot
