# docs/tasks.gp — the EVAL.md A stress totals per method, at 16k and 2M events.
#
#   rm -f docs/tasks.dat && build/bench/bench_tasks --dat docs/tasks.dat && gnuplot docs/tasks.gp
#
# docs/tasks.dat lines: T method-index "method" correct total (5 scenarios × seeds × 2 trials).
set terminal pngcairo size 1100,520 font ",10"
set output "docs/tasks.png"
set title "EVAL.md A stress test: correct answers out of 50 (5 scenarios × 5 seeds × 2 trials)"
set style data histograms
set style histogram clustered gap 1
set style fill solid 0.8 border -1
set boxwidth 0.9
set yrange [0:55]
set ylabel "correct / 50"
set xtics rotate by -25 nomirror
set key top right
set grid ytics
plot "< awk '$1 == 16384' docs/tasks.dat" using 4:xtic(3) title "T = 16,384", \
     "< awk '$1 == 2097152' docs/tasks.dat" using 4 title "T = 2,097,152"
