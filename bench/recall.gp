# bench/recall.gp — the index selector against the exact full read (issue 15): recall under paraphrase and
# speed against T, from the DATA lines of bench/bench_recall (mean over seeds via gnuplot's `smooth unique`).
#   for s in 1 2 3; do for g in iso clu; do build/bench/bench_recall --gen $g --seed $s > run_${g}_h1_s$s.txt; done; done
#   for g in iso clu; do build/bench/bench_recall --heads 8 --gen $g --min-log2 15 --max-log2 17 --needles 250 \
#     > run_${g}_h8_s1.txt; done
#   grep -h '^DATA' run_*.txt | cut -d' ' -f2- > docs/recall.dat && gnuplot bench/recall.gp   -> docs/recall.png
# (docs/recall.dat: the H = 1 grid of docs/RESULTS.md, "Sparse read, round 2", and the H = 8 runs.)
# docs/recall.dat columns: gen H T full_ms sparse_ms full/sparse r1.0 r0.9 r0.8 r0.7 sparse_p99_ms
set terminal pngcairo size 1500,600 font ",10"
set output "docs/recall.png"
set multiplot layout 1,2 title "index selector (default topk 16) against the exact full read, d = 64 (mean over seeds; docs/RESULTS.md)"
set logscale x 2
set format x "2^{%L}"
set grid
set key bottom left font ",8"
sel(g, h) = sprintf("< awk '$1==\"%s\" && $2==%d' docs/recall.dat", g, h)
set title "recall: sparse pointer = full read's pointer"
set xlabel "T (events)"
set ylabel "recall"
set yrange [0.85:1.005]
plot sel("iso", 1) u 3:8 smooth unique w lp lw 2 pt 7 lc 1 t "isotropic, cos 0.9", \
     sel("iso", 1) u 3:9 smooth unique w lp lw 2 pt 5 lc 1 dt 2 t "isotropic, cos 0.8", \
     sel("iso", 1) u 3:10 smooth unique w lp lw 1 pt 9 lc 1 dt 3 t "isotropic, cos 0.7", \
     sel("clu", 1) u 3:8 smooth unique w lp lw 2 pt 7 lc 2 t "clustered, cos 0.9", \
     sel("clu", 1) u 3:9 smooth unique w lp lw 2 pt 5 lc 2 dt 2 t "clustered, cos 0.8", \
     sel("clu", 1) u 3:10 smooth unique w lp lw 1 pt 9 lc 2 dt 3 t "clustered, cos 0.7", \
     sel("iso", 8) u 3:9 smooth unique w lp lw 2 pt 5 lc 3 dt 2 t "H = 8 isotropic, cos 0.8", \
     NaN w p lc 4 pt 7 t "H = 8 clustered: 0.24-0.32 at cos 0.9 (off scale)", \
     0.97 w l lc 0 dt 4 t "target at cos 0.8", 0.99 w l lc 0 dt 5 t "target at cos 0.9"
set title "speed: full read / sparse read (medians of one run, thread CPU time; loaded machine)"
set ylabel "full / sparse"
set yrange [1:1000]
set logscale y 10
plot sel("iso", 1) u 3:6 smooth unique w lp lw 2 pt 7 lc 1 t "isotropic, H = 1", \
     sel("clu", 1) u 3:6 smooth unique w lp lw 2 pt 7 lc 2 t "clustered, H = 1", \
     sel("iso", 8) u 3:6 smooth unique w lp lw 2 pt 5 lc 3 t "isotropic, H = 8", \
     sel("clu", 8) u 3:6 smooth unique w lp lw 2 pt 5 lc 4 t "clustered, H = 8", \
     500 w l lc 0 dt 4 t "target 500x"
unset multiplot
