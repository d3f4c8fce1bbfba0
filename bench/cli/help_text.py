"""The help text of the ``marginbench`` command: what each subcommand, family, model and attack means.

Every default it names is read from where it is set (the attacks' and specs' fields, the families' constants),
never retyped.
"""

from marginbench.attacks.foolbox_adapter import FbBoundary, FbBrendelBethge, FbCW, FbDDN, FoolboxL2
from marginbench.attacks.pgd import MinimalPGD
from marginbench.bench.experiment.families import KKT_L2_LAMBDA, KKT_L2_MAX_ITERS, KKT_L2_STATIONARITY
from marginbench.checking.proof import PROOF_GAP
from marginbench.models.diagnostics import MARGIN_SLACK
from marginbench.models.train_spec import MAX_ITERS, STALL_ITERS, SUBSPACE_TRAIN, TrainSpec


def short(x: float) -> str:
    """A number as the help writes it: 1e-5 rather than 1e-05, 0.05 and 1.1 as they are."""
    if x == 0 or 1e-2 < abs(x) < 1e5:
        return f"{x:g}"
    mantissa, exponent = f"{x:e}".split("e")
    return f"{mantissa.rstrip('0').rstrip('.')}e{int(exponent)}"


_PAPER = TrainSpec()  # the kkt family's training: Vardi et al.'s schedule
_PGD = MinimalPGD  # its fields' defaults
_BOX = FoolboxL2.bound_factor  # the Foolbox attacks' box margin, in units of sqrt(d)

RUN_EPILOG = f"""\
examples:
  marginbench run --out runs/default
      the default preset: d=64, n=d, width 256, seed 0; vanilla and robust-construction; 11 attacks, every
      attack below but exact and the subspace ones (subspace-z, pgd-off, pgd-on)
  marginbench run --preset smoke --out runs/smoke
  marginbench run --d 100 --alpha 0.5 --width 1000 --models vanilla --seeds 0,1,2 --out runs/d100
  marginbench run --resume runs/d100
      finish an interrupted sweep: finished runs are kept, the others run (the spec comes from its manifest);
      each run that is redone is named with the reason, and runs that failed are retried unless --keep-failed
  marginbench run --preset smoke --seeds 0,1,2,3 --workers 4 --out runs/pool
      four runs at a time on a local process pool
  marginbench run --preset smoke --executor ray --ray-address auto --out runs/ray
      one Ray task per run on the running Ray cluster (pip install 'marginbench[ray]')

  marginbench run --plugin my_attacks.py --attacks my-attack,pgd --out runs/mine
      an attack registered by a plugin file (installed plugin distributions need no option; see marginbench list)
  marginbench run --family subspace --d 128 --ell 112 --width 64 --out runs/subspace
  marginbench run --preset paper-fig1a --scale small --out runs/fig1a
  marginbench run --preset paper-fig1b --scale medium --out runs/fig1b
      the paper's width and d = 100...300 on a CPU: arc schedule in precision auto
  marginbench run --preset paper-twin --scale medium --out runs/twin
      the arc schedule certified: every net trained again with the paper's schedule (--twin paper)
  marginbench run --preset paper-fig1a --scale full --device cuda --executor ray --gpus-per-run 0.25 --out runs/full
      the paper's grid on a Ray cluster's GPUs, four runs per GPU

Exit status: 0 when every run finished ok; 1 when a run failed (each one is named at the end, its error is in
summary.csv, and --resume retries it) or the sweep was cut short; 2 for a mistake in the options or data,
said in one line before any work; 130 when interrupted.

Before a sweep starts it prints its size (runs, trainings, estimated FLOPs and minutes at this machine's
measured matmul rate); with --progress one line follows the whole sweep with an ETA.

families, datasets and models (which combinations mean what):
  kkt       Vardi et al. 2022. Data: sphere (x uniform on the sphere of radius sqrt(d), random labels).
            All of W, b, v trained with the exponential loss and the paper's schedule (lr {short(_PAPER.lr)},
            x{_PAPER.lr_growth:g} every {_PAPER.growth_every} iterations, stop at loss < {short(_PAPER.target_loss or 0)}); attacked at the training points.
            vanilla              PyTorch's default init
            small-init           the same init divided by sqrt(2d): the KKT limit should not care
            l2                   vanilla init, loss + lambda/2 ||theta||^2 over W, b, v (lambda: --l2,
                                 default {short(KKT_L2_LAMBDA)}) with the normalized schedule, until stationary to
                                 --stationarity (default {short(KKT_L2_STATIONARITY)}) or --max-iters (default {KKT_L2_MAX_ITERS}): its
                                 stationary points are KKT points of the max-margin problem as lambda -> 0
            robust-construction  Thm 3.1's closed-form net (width n, one neuron per example; --width
                                 does not apply): nothing below (1-c)/4 sqrt(d) flips a training point
  subspace  Melamed et al. 2023. Data: subspace (a random (d-ell)-dim subspace P, points at radius
            sqrt(d), --label-rule random|linear) or digits (sklearn's 8x8 digits, odd vs even, on their
            top 64-ell principal components). Only W trained (no bias, u_i = +-1/sqrt(width) fixed),
            logistic loss, constant step (GD, or SGD with --batch-size) until every training margin
            is >= {SUBSPACE_TRAIN.target_margin:g}; attacked at --n-eval held-out points of P.
            vanilla     w_i ~ N(0, I/d)
            small-init  w_i ~ N(0, beta^2 I), beta = 1/(d sqrt 2) (Cor 6.1)
            l2          vanilla init, exactly T = --max-iters steps of loss + lambda/2 ||W||^2 with
                        (1 - lr lambda)^T = 1/sqrt(2d) (Cor 6.2) unless --l2 sets lambda
            three-layer Melamed et al. Fig. 4's own net: two hidden ReLU layers of --width, PyTorch's init
                        with the first layer's multiplied by --init-scale, every layer trained (mean
                        logistic loss, constant step); only pgd, pgd-on, pgd-off apply (autograd)
            --init-scale multiplies any init's standard deviation (Melamed et al. Fig. 4: 1/factor)
attacks:
  universal-z          Vardi et al. Thm 4.1's direction z = sum_{{i in I}} y_i x_i over the margin set I
                       ({MARGIN_SLACK:.0%} slack): exact minimal scale per example and the common scale that flips all of I
  subspace-z           Melamed et al. Thm 5.1's off-manifold z (needs data on a subspace P): per example
                       whether the theorem's own z flips and its norm against the bound (examples.csv
                       thm51_* columns), and the exact minimal scale along its universal direction
  pgd                  L2 PGD ({_PGD.steps} normalized steps of {_PGD.step_size:g} eps, {_PGD.restarts} restart), minimal norm by bisecting eps
                       per example to {_PGD.rel_precision:.0%} relative precision: a Polyak/DeepFool walk brackets, then each round
                       runs up to {_PGD.candidates} budgets per example at once, warm started from the smallest flip
  pgd-off, pgd-on      the same with every step projected onto P-perp / onto P (subspace data only;
                       elsewhere recorded as "unavailable: does not apply")
  fmn                  native fast minimum-norm L2 (Pintor et al. 2021, Alg. 1, with its eps-ball projection)
  boundary-walk        exact first sign change along segments to the nearest other-side points and the
                       local normals, then shrinking; finds flips where gradients vanish (robust-construction)
  region-walk          walks activation regions from a first flip: inside one the net is affine, so the
                       nearest flip there is a small QP (DAQP); steps into the neighbouring region across a
                       boundary the answer presses on while that helps (a local minimum of the exact problem)
  exact                the proved minimal flip: a mixed-integer QP (one binary per ReLU that can change state
                       in the ball of the region walk's flip) solved by SCIP within --exact-seconds per
                       example (pip install 'marginbench[exact]'); examples.csv certified_lower_bound (SCIP's
                       dual bound), solver_proved, solver_seconds
  fb-fmn               Foolbox 3.3.4 L2FMNAttack as shipped: it never projects onto its eps-ball, so its
                       norms are not minimal (kept for comparison; use fmn)
  fb-ddn, fb-deepfool  Foolbox DDN ({FbDDN.steps} steps) and L2 DeepFool (2 candidates)
  fb-cw                Foolbox Carlini-Wagner L2 with initial_const {FbCW.initial_const:g}, stepsize {short(FbCW.stepsize)}, \
{FbCW.steps} steps, {FbCW.binary_search_steps} binary
                       searches (Foolbox's defaults, made for [0,1] images, give norms ~100x DDN's here);
                       the slowest gradient attack: a reference point, not a fast leaderboard entry
  fb-boundary          Foolbox Boundary attack ({FbBoundary.steps} steps), decision-based, started at the nearest
                       other-side point
  fb-brendel-bethge    Foolbox L2 Brendel-Bethge ({FbBrendelBethge.steps} steps) from the nearest other-side point; needs numba
                       (pip install 'marginbench[foolbox]'; its first call compiles with numba); without it
                       it is recorded as unavailable and the run goes on
  Foolbox attacks use the box [min X - {_BOX:g} sqrt(d), max X + {_BOX:g} sqrt(d)], so no answer of norm <= {_BOX:g} sqrt(d)
  is clipped. Every attack's wall time and forward/backward passes per example are in summary.csv.

Result directory: manifest.json, summary.csv, examples.csv, runs/<run_id>/{{model.pt,data.npz,perturbations.npz}}
and each finished run's rows and completion marker, runs/<run_id>/{{examples.csv,run.json,COMPLETE}}; when the
sweep ends, figures/ gets the security-evaluation curves and the leaderboard (see `marginbench plot --help`),
and a paper's preset (paper-*, melamed-fig4) also its paper's figures.
Every reported norm is re-verified by a forward pass, and counts only as a flip beyond rounding:
s N(x + delta) < -tau, tau a bound on the forward pass's rounding error in any summation order (proposals
within it are rejected and counted: summary.csv rejected_ties); failures are +inf. Every example also gets a
certified lower bound on its minimal flip (examples.csv lower_bound: the triangle relaxation's, or exact's)
and proved_optimal (its best norm is within {100 * PROOF_GAP:g}% of that bound); summary.csv has proved_fraction and
median_certified_gap (median norm / lower_bound). A run whose training hits NaN/inf,
or that raises, is recorded as failed (summary.csv: run_status, attack_status, error) and the sweep goes on.

Nothing runs forever: training stops at --max-iters (default {MAX_ITERS:,}), and a paper schedule that cannot
reach its target loss by then (e.g. --lr-growth 1) is refused before any work; the estimate line names the
trainings that will stop at their cap. A net whose every ReLU is off at every training point that still
carries loss (its gradient is exactly 0), or whose loss has not moved for {STALL_ITERS:,} iterations while the step
grows, stops at once as a failed run with that reason. An attack past --attack-timeout is stopped and
recorded as failed ("timed out"); the run's other attacks keep their rows.
"""


LEADERBOARD_EPILOG = """\
examples:
  marginbench leaderboard runs/default
  marginbench leaderboard runs/d16 runs/d32 runs/d64 --format plain
      several result directories merged (their runs stay distinct, even with equal run_ids)
  marginbench leaderboard runs/default --format json -o leaderboard.json
  marginbench leaderboard runs/default --format csv > leaderboard.csv
  marginbench leaderboard runs/default --format html -o leaderboard.html
      one self-contained static page (no network): both sortable tables, the figures, each run's settings

Models are ranked by the median over runs (seeds) of each run's median best norm / sqrt(d), where an
example's best norm is the smallest over every attack run on it; equal scores share a rank. Attacks are
ranked by AttackBench's optimality: the area under the per-example best's robust-accuracy-vs-eps curve
over the area under the attack's (1 = as good as the best on every example; failures count as the largest
norm found on the run). Also shown: how often the attack is the best, its median ratio to the best, its
success rate, milliseconds and (where recorded) forward/backward passes per example.

Formats: any tabulate format prints the two tables rounded for reading. The exports keep every float at full
precision and carry each directory's provenance (preset, git commit, versions, machine, command, specs, the
SHA-256 of summary.csv and examples.csv, the manifest's facts per run):
  json   strict JSON: {"format", "columns" (what each field means), "models": [record per row],
         "attacks": [record per row], "provenance": [one per DIR]}; +inf is the string "inf", a value that
         does not apply is null
  csv    one table: column "table" (models or attacks) first, then the union of both tables' columns
         (blank where a column belongs to the other table; +inf is inf), and last "provenance", the JSON
         export's provenance list as compact JSON text (the same on every row)
  html   one page (needs -o): inline styles, a small script that sorts a table by the header clicked
         (numbers by their full-precision values, blanks last), the security curves, the leaderboard
         figure and the papers' figures the data supports as embedded PNGs, and per DIR its provenance,
         its runs and its specs. It references nothing outside itself.
-o FILE writes any of these to FILE instead of standard output.
"""


BASELINE_EPILOG = """\
examples:
  marginbench run --preset baseline --out runs/baseline
  marginbench baseline runs/baseline -o results/baseline.json

The baseline holds every numeric summary.csv value of the run (not the timings) and a tolerance band per
metric, {"rel": r, "abs": a}: a number passes when |value - baseline| <= a + r * |baseline|. Edit the bands
in the file to tighten or loosen one metric; "*" applies to metrics without their own band.
"""


CHECK_EPILOG = """\
examples:
  marginbench check runs/baseline --baseline results/baseline.json
  marginbench check results/zoo --deep
  marginbench check runs/baseline --baseline results/baseline.json --deep     both checks, in that order

DIR is first verified against its checksums (manifest.json's own, the tables', each run's COMPLETE marker);
anything altered, cut short or left without a checksum entry is refused (exit 2).

--baseline: every number of the baseline must lie within its band in DIR's summary.csv.
--deep: every row of examples.csv is recomputed from runs/<run_id>/{model.pt,data.npz,perturbations.npz}:
  the net in float64, each attack's saved perturbation applied to the attacked points, success by the
  harness's flip rule (sign change beyond the rounding bound), norm ||delta|| where it flips (+inf elsewhere),
  best = the minimum over the attacks; a table lists every row whose success or norm (beyond 1e-9 relative)
  disagrees. It needs DIR's runs/ folder. Give --baseline, --deep, or both.

Exit status: 0 when every check passes; 1 when some number drifted or is missing (a table names each one:
run, attack, metric, baseline, value, difference, allowed) or some row disagrees with its recomputation; 2 on
bad input (an unreadable, non-regular, oversize or malformed baseline; a directory that fails verification).
"""


PLOT_EPILOG = """\
examples:
  marginbench plot runs/default
      into runs/default/figures: security_curves.png and leaderboard.png
  marginbench plot runs/grid -o figures/
  marginbench plot runs/d16 runs/d32 runs/d64 -o figures/

Figures (each drawn only when the data supports it; the others are listed with the reason):
  security_curves           for every result directory with examples.csv: one panel per model setting
                            (model, dataset, d, n, width; its runs/seeds pooled), the fraction of examples
                            not flipped within eps (norm > eps) against eps/sqrt(d), one line per attack (its
                            own colour and marker; Foolbox's dashed) and best (per example, the minimum over
                            them): the curve whose area AttackBench's optimality compares. An attack that
                            flips nothing in a panel is listed in the legend as "no flip" instead; exact is
                            black dashed; certified lower bounds shade where the true curve lies; dotted:
                            sqrt(d); dash-dotted: Theorem 3.1's radius on a construction. One x-scale for all
                            panels, logarithmic where one spans 10x; more than 6 settings continue in
                            security_curves_2, ...
  leaderboard               models by median best/sqrt(d) as bars (min..max where two or more runs), and
                            each attack's optimality per model setting as a grid beside the pooled value
  fig1a_common_c_vs_d       Vardi et al. Fig. 1a: universal-z's common c vs d per alpha, sqrt(d) line
  fig1b_common_c_vs_width   Vardi et al. Fig. 1b: the same for n = d, one line per width
  fig2a_margin_fraction     Vardi et al. Fig. 2a: fraction of the training set on the margin vs d
  fig2b_not_on_margin       Vardi et al. Fig. 2b: number of examples not on the margin vs d
  fig4_norm_vs_init_scale   Melamed et al. Fig. 4: pgd-on / pgd-off / pgd norms vs the init-scale factor
Error bars of the papers' figures are standard deviations over seeds, drawn only at points with two or
more (each title says which). `marginbench run` draws the first two into DIR/figures after every sweep, and
a paper's preset its figures too.
"""

THROUGHPUT_EPILOG = (
    "examples:\n"
    "  marginbench throughput\n"
    "  marginbench throughput --sizes paper --format json\n"
    "  marginbench throughput --sizes medium  # float64/float32/bf16 steps at d=300, n=5196\n"
    "  marginbench throughput --device cuda"
)

LIST_EPILOG = """\
examples:
  marginbench list
  marginbench list --plugin my_attacks.py
  marginbench list --plugin my_package.attacks

Each dataset, model and attack is listed with its source: built-in, "distribution NAME VERSION" (an installed
package's entry point in the group marginbench.attacks or marginbench.models), or "plugin file PATH (sha256 ...)"
/ "plugin module NAME, PATH (sha256 ...)" (--plugin). A plugin that fails to import is one warning line and the
rest goes on; a name registered twice is shown with both sources and is an error only when it is asked for.
Each preset is listed with its size at each --scale (runs, trainings; one line where the scale changes nothing)
and the time `marginbench run` would estimate for it on this machine (training and certified lower bounds;
attacks not counted), from the matmul rates measured once; the last line says which rates.
"""

ATTACK_EPILOG = """\
examples:
  marginbench attack runs/default --attacks fb-ddn,boundary-walk
      add two attacks to every saved run of runs/default; the per-example best and the tables are rebuilt
  marginbench attack runs/default --attacks my-attack --plugin my_attacks.py --out runs/default-mine
      attack a copy (runs/default is left untouched) with an attack from a plugin file
  marginbench attack runs/default --attacks pgd --overwrite
      replace the rows of an attack that DIR already holds

Each run's saved network (model.pt) and points (data.npz) are attacked with the attack's seed and verified as
`run` does, so the numbers equal those of a sweep that had the attack from the start. The attack is added to the
manifest's spec (`run --resume` gives unfinished runs every attack) and to its list "attacked" (attacks, time,
version, commit, plugins). An interrupted attack is finished by the same command: the runs it rewrote are kept.
Runs that did not finish are skipped (run --resume finishes them); a run that failed before it had a model gets
"not run" rows; a three-layer net takes only pgd, pgd-on, pgd-off (the others are recorded unavailable).

Exit status: 0 when every run is ok; 1 when a run failed or the disk failed; 2 for a mistake in the options (an
attack DIR already holds, without --overwrite; an unknown attack; a directory with no saved runs), said in one
line before any work; 130 when interrupted.
"""
