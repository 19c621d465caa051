# bench/mqar.gp — MQAR capacity curves from the per-trial file of bench/mqar (mean over seeds via
# gnuplot's `smooth unique`, which averages points of equal x).
#   build/bench/mqar --seeds 10 --dat docs/mqar.dat && gnuplot bench/mqar.gp   -> docs/mqar.png
set terminal pngcairo size 1500,1250 font ",10"
set output "docs/mqar.png"
set multiplot layout 3,3 title "MQAR on the raw recurrences: accuracy vs n_{pairs}/d_h (mean of 10 seeds; decode = nearest of 128 codebook values)"
set xrange [0.1:2.05]
set yrange [-0.02:1.02]
set logscale x 2
set xtics ("1/8" 0.125, "1/4" 0.25, "1/2" 0.5, "3/4" 0.75, "1" 1, "1.5" 1.5, "2" 2)
set grid
set key bottom left font ",8"
sel(k, d, m) = sprintf("< awk '$1==\"%s\" && $2==%d && $5==\"%s\"' docs/mqar.dat", k, d, m)
do for [k in "isotropic shared0.5 shared1"] {
  do for [d in "32 64 128"] {
    set title sprintf("%s, d_h = %s", (k eq "isotropic" ? "isotropic keys" : k eq "shared0.5" ? "shared-direction keys, a = 0.5" : "shared-direction keys, a = 1"), d)
    set xlabel "n_{pairs} / d_h"
    set ylabel "accuracy"
    plot sel(k, d+0, "vla") u 3:7 smooth unique w lp lw 2 pt 7 t "VLA (identity, s=1)", \
         sel(k, d+0, "vla_paper") u 3:7 smooth unique w lp lw 2 pt 5 t "VLA (paper: elu1, s=1/sqrt(d))", \
         sel(k, d+0, "delta") u 3:7 smooth unique w lp lw 2 pt 9 t "DeltaNet (beta=1)", \
         sel(k, d+0, "linear") u 3:7 smooth unique w lp lw 2 pt 11 t "linear (identity)", \
         sel(k, d+0, "linear_elu1") u 3:7 smooth unique w lp lw 2 pt 13 t "linear (elu1)", \
         sel(k, d+0, "softmax") u 3:7 smooth unique w lp lw 2 dt 2 pt 1 t "full softmax"
  }
}
unset multiplot
