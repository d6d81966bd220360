"""Settings of a VDAM initial-model run, with RELION's defaults for the 3D initial model job."""

from __future__ import annotations

from dataclasses import dataclass


# the race of random starts runs every class of every start through its early iterations: by default
# it is kept to this many start x class maps, i.e. 5 starts for one class, 2 for two, 1 (no race) from
# three classes on, where the classes are themselves that many random starts competing for the
# particles (benchmarks/results/2026-12-01-classes.md)
START_CLASS_BUDGET = 5


def starts_for_classes(n_classes: int) -> int:
    """Default number of random starts for a run of n_classes classes."""
    return max(1, START_CLASS_BUDGET // max(1, n_classes))


@dataclass(frozen=True)
class VdamConfig:
    n_iter: int = 100
    n_classes: int = 1
    particle_diameter_a: float = 200.0
    flatten_solvent: bool = True
    healpix_order: int = 1  # coarse 30 deg, fine 15 deg ("initial angular sampling" 15)
    offset_range_px: float = 6.0
    offset_step_px: float = 2.0
    tau2_fudge: float = 4.0
    step_size: float = 0.5
    initial_fraction: float = 0.3
    final_fraction: float = 0.2
    initial_subset: int = -1  # -1: RELION's automatic size
    final_subset: int = -1
    # RELION's automatic final mini-batch (10 % of the particles, at least 1,000) capped at this fraction
    # of the data set (never below the initial size; 0: no cap, as RELION). It binds below 2,000
    # particles, where RELION's floor of 1,000 makes the late mini-batches most or all of the data: the
    # update then loses the mini-batches' randomness, and a large C1 particle from 1,000 images settled
    # in a wrong fold (seeds 1 and 2); with half the data per batch seed 1 found the right one (1.14x its
    # bound), the 1,500-particle aggregate stayed at 1.02-1.03x (a third had cost it 1.14x), symmetric
    # specimens and real beta-gal kept their maps, and the real job's iterations after the race took
    # 0.76-0.89x as long (benchmarks/results/2026-12-04-s35-final-batch-half.md)
    final_subset_max_fraction: float = 0.5
    mu: float = 0.9
    # the coarse significance cap per particle (RELION's --maxsig); -1: 100 whatever K, where RELION's
    # default is 100 K: with junk in the data and several classes the junk particles' posteriors stay
    # broad and fill the cap; at 100 real K=3 jobs ran in 0.69-0.91x the time with the same separation
    # (benchmarks/results/2026-12-03-s27-classes.md, 2026-12-05-s37-classes.md)
    max_significant: int = -1
    # the VDAM update's floor on the Fisher weight (vdam.update.fisher_weight_floor): 1 for
    # RELION-normalised images; the job sets it from the images' background std
    weight_floor: float = 1.0
    adaptive_fraction: float = 0.999
    perturb: float = 0.5
    sigma_offset_a: float = 10.0
    auto_sampling: bool = True
    # mini-batch iterations search each coarse translation alone, without its 4 children at half the
    # step, while the map's resolution is coarser than 4 steps (sampling.grid.sub_translations_needed;
    # the race's scoring and the final pass keep the children)
    auto_sub_translations: bool = True
    max_healpix_order: int = 2  # RELION allows coarse order 3 (7.5 / 3.75 deg): 8x the coarse search; finer steps come from local searches (benchmarks/results/2026-11-30-local-refinement.md)
    n_particles_sigma2: int = 1000
    mask_edge_px: float = 5.0
    seed: int = 1
    write_every: int = 10
    chunk_size: int = 0  # particles per E-step chunk; 0: chosen from memory
    pool: int = 0  # at least this many particles per chunk (RELION's --pool)
    final_reconstruction_max: int = 50_000  # particles in initial_model's reconstruction (a random subset beyond)
    # one class: the final pass gives poses to at most this many particles (vdam.iterate.final_pass_subset),
    # which alone make initial_model; the others stay unassigned (class 0) in the last data.star, as RELION
    # leaves particles the last mini-batches did not visit. 10,000 particles at their poses gave a map within
    # 1 % of 20,000's (FSC 0.5 7.30 vs 7.23 Å, 64 px); the pass costs ~2 s per 1,000 particles on 2 cores.
    # With several classes every particle is assigned: its class is what a user selects particles by.
    final_pass_max: int = 20_000
    # K > 1: a class whose map superposes on the largest class's with at least this correlation (either
    # hand) and that holds at least pool_min_particles joins it for initial_model (analysis.pool_classes);
    # above 1: never
    pool_min_cc: float = 0.9
    pool_min_particles: int = 50
    pool_max_resolution_ratio: float = 1.25  # and whose estimated resolution (Å) is at most this times the largest class's
    # particles finer than the working grid: initial_model's detail beyond the working Nyquist comes from a
    # reconstruction at the final poses on a finer grid (io.working_grid.final_grid_max_resolution_a)
    final_fine_grid: bool = True
    # the final pass keeps the poses the last mini-batch gave its particles whose posterior was sharp
    # (pmax >= this; above 1: every particle is searched again)
    final_reuse_min_pmax: float = 0.5
    # local searches beyond the global grid (sampling.local): after VDAM's initial phase, once the global search is at its finest
    # order and the expected angular error is below its fine step, particles whose last posterior was
    # sharp (pmax >= local_min_pmax) are searched around their previous pose at coarse order up to
    # max_local_order (4: 3.75 deg coarse, 1.875 deg fine), translations at local_offset_step_px
    local_searches: bool = True
    # then every pose is refined once more, locally, one order finer where the expected angular error allows
    # (up to max_local_order + 1) and with translations at half the local step over half the range
    # (vdam.iterate.polish_config; FSC 0.5 to the truth 0.6-12 % finer on 10 finished runs of 9 specimens).
    # final_polish_passes polishes: 0 none; each later one searches around the poses the one before stored
    final_polish_passes: int = 2
    # with several classes the polish searches each particle in its own class only (the first stage chose
    # it); False: every class, as the first stage. Real K=3: the polish's coarse pass 1.85 -> 1.45 s
    # (benchmarks/results/2026-12-05-s38-k-classes.md)
    polish_in_own_class: bool = True
    # local searches evaluate only each particle's current class (polish_config sets it from
    # polish_in_own_class; the mini-batch iterations search every class)
    local_in_own_class: bool = False
    # the polish stores each particle's posterior-mean pose (estep.posterior_mean) instead of its best sample
    # (polish_config sets local_posterior_mean from it). hb_c2_tight (120 kDa, SNR 0.06), three finished runs:
    # angular error 2.67 -> 2.46 deg median, FSC 0.5 to the truth 5.47-5.81 -> 5.28-5.34 Å
    # (benchmarks/results/2026-12-06-s49-posterior-mean.md)
    final_posterior_mean: bool = True
    # local searches store posterior-mean poses (polish_config sets it; the iterations store best samples)
    local_posterior_mean: bool = False
    # with several classes the final pass's first stage too searches the particles whose last
    # posterior was sharp (pmax >= local_min_pmax: locally, around their pose) in the class their last
    # mini-batch chose; the others search every class globally. False: the sharp ones every class too
    final_local_in_own_class: bool = True
    max_local_order: int = 4  # the final pass (poses only)
    # mini-batch iterations (3: 3.75 deg). Default 0 (final pass only): local searches in the iterations
    # locked the tight octahedral particle (seed 1) in a wrong solution (benchmarks/results/2026-11-30-local-refinement.md)
    max_local_order_iterations: int = 0
    # sharp particles in the mini-batch iterations after the initial phase searched at the global order
    # but only near their previous pose (needs max_local_order_iterations >= that order): 0.7x the
    # time of an iteration, but off: the window forbids the 180-degree flips between pseudo-symmetric
    # poses that the global search makes, and real beta-gal seed 1 ended at 27.7 instead of 10.0 Å
    # (benchmarks/results/2026-11-30-local-same-order.md)
    local_same_order: bool = False
    # in VDAM's final phase, the resolution estimate reads the SSNR the map has accumulated over
    # its moments' memory, not one pseudo half mini-batch's (vdam.iterate.map_information)
    accumulated_ssnr: bool = True
    # with several classes of which only some could be centred on their symmetry (a junk class's
    # centre far off), sharp particles of the centred classes still search narrowed translations: their
    # origins mean the same in every centred class (an uncentred class is searched from them too, but it
    # is one whose axes recentring did not trust). False: no narrowing unless every class is centred.
    # Real K=3 seed 2 (one class uncentred): 267 -> 239 s, the same classes and map
    # (benchmarks/results/2026-12-03-s27-classes.md)
    narrow_in_centred_classes: bool = True
    # with several classes each class is compared and updated on the window its own resolution sets
    # (model.params.class_image_sizes; the best class on the run's current_size): a junk class at 17 Å
    # holds nothing beyond ~10 Å (its window 46 of 64 px), and its many broad hypotheses are summed over half the pixels.
    # False: every class on current_size, as RELION
    class_windows: bool = True
    # with several classes, in the mini-batch iterations, a particle last placed in a class whose
    # resolution trails the best class's by at least lesser_class_trail_shells shells passes at most this
    # many coarse hypotheses to the fine pass (vdam.iterate.particle_caps; 0: significant_cap for all).
    # Such particles are mostly junk with broad posteriors that fill the cap: on real K=3 6.5 % of the
    # particles held 45 % of the fine pass's hypotheses, three quarters of them in the junk classes
    lesser_class_max_significant: int = 30
    lesser_class_trail_shells: int = 3
    local_min_pmax: float = 0.5
    # after VDAM's initial phase, sharp particles (pmax >= local_min_pmax) of the mini-batch iterations
    # search translations only this many offset steps around their previous origin, over all
    # orientations, where one class map is centred on its imposed symmetry (vdam.iterate.narrow_translations;
    # 0: the whole offset range, as RELION)
    narrow_offset_steps: float = 2.0
    # after VDAM's initial phase, with one class whose map the imposed (proper) group is centred and
    # imposed on, the mini-batch iterations search orientations of one asymmetric unit only, with the
    # iteration's sums averaged over the group (vdam.unit_search.unit_operators); False: every orientation
    search_asymmetric_unit: bool = True
    # with several classes the final pass too: its particles searched globally (pmax < local_min_pmax, with
    # junk in the data a third to a half of them) search one asymmetric unit of each class searched by
    # unit, and their poses are spread over the equivalents afterwards
    # (vdam.unit_search.spread_equivalent_poses). One class: always every orientation. Off: real K=3
    # kept its map and saved 2.5 s of the final stage, but the tight C2 dimer with --K 2 lost 1.18 ->
    # 1.24x its bound (a full search meets each pose at G placings of the grid, one unit at one;
    # session 25 saw the same on adk_o); benchmarks/results/2026-12-05-s38-k-classes.md
    final_unit_search: bool = False
    local_offset_range_px: float = 2.0
    local_offset_step_px: float = 1.0
    local_coarse_step_deg: float = 7.5  # the local coarse image resolves max(its angular step, this)
    # independent starts (vdam.restarts): n_starts random starts race; at start_iterations (per 100
    # iterations of the run) the best start_survivors go on, at start_final_iterations the best one
    # does, scored by the log likelihood of a fixed sample of start_score_particles particles
    # (1: one start, as RELION; -1: starts_for_classes). Measured: benchmarks/results/2026-11-30-starts.md
    n_starts: int = -1
    start_survivors: int = 2
    # a start that trails the last survivor of a round that keeps several by less than this many standard
    # errors of the per-particle score differences goes on too (vdam.restarts.survivors_with_ties; 0: never)
    start_tie_z: float = 1.0
    start_iterations: int = 10
    start_final_iterations: int = 30
    start_score_particles: int = 300
    # with an imposed group, the last round scores each start's maps symmetrised about their own axes
    # (vdam.restarts: a wrong fold can win in C1 and lose symmetrised)
    start_score_symmetrised: bool = True
    # a one-class run that imposes no group carries the race's best `runners_up` other starts of its last
    # round on beside the winner (vdam.finalists), each unless the winner led it by finalist_max_z or more
    # standard errors of their paired per-particle scores (a clear lead: hb6_c1 11.8, hb4_rod 4.9; every
    # hb2_c1_40 race, right or wrong, 0.1-3.4); at each (iteration per 100 iterations of the run, runs
    # kept) of finalist_prunes the runs whose pseudo half-sets agree best at their poses go on, at n_iter
    # the best one (0 runners-up: none carried)
    runners_up: int = 4
    finalist_max_z: float = 4.0
    finalist_prunes: tuple = ((70, 2),)
    # a one-class run with an imposed group of order grouped_min_order or more (T, O, I) races every start to
    # the last round (no first cut), carries this many runners-up whatever the winner's lead, each with the
    # group imposed as the run has it, and keeps at grouped_choice_at per 100 of the run the one whose
    # pseudo half-sets agree better: the fold of a tight icosahedral shell forms, or not, between
    # iterations 30 and 50, and wrong winners led by up to 31 standard errors (vdam.finalists)
    grouped_runners_up: int = 1
    grouped_min_order: int = 12
    grouped_choice_at: int = 50
    # an explicit point group (--sym other than C1 and auto) is imposed on the class maps every this
    # many iterations after VDAM's initial phase (when the race of starts has chosen), about each
    # map's own axes (symmetry.impose); 0: only the final map is symmetrised, as RELION does
    impose_symmetry_every: int = 5
    # at each imposition, move each class map so that its symmetry centre is the box centre, with its
    # moments and its particles' origins (vdam.recentre): the solvent mask and the origin prior are
    # centred on the box
    recentre_on_symmetry: bool = True
    # with several classes, a class whose symmetry centre lies too far from the box centre to be trusted
    # (vdam.recentre.MAX_SHIFT_BOX_FRACTION: a junk class) gets the group imposed about the box centre
    # instead (symmetry.impose), so that it too is searched over one asymmetric unit; False: about its
    # own far centre, searched over every orientation. Real K=3 (benchmarks/results/2026-12-05-s37-classes.md)
    centre_untrusted_classes: bool = True
    # --sym auto: when a convergence check sends the C1 run on past n_iter, the particles choose the group
    # then and a group > C1 is imposed for the rest of the run (auto_symmetry.group_mid_run); False: the
    # run stays C1 and the group is chosen at the end only
    auto_symmetry_mid_run: bool = True
    # --sym auto: the particles also choose at this iteration per 100 of the run (the finalists' prune,
    # after it), and a group > C1 is imposed from there with the race's runners-up dropped (they are
    # for C1 particles); C1 keeps the run as it was, choosing again at the end. On checkpoints of
    # iteration 70 the choice was right on every job tried (hb2_c1_40's thirteen seeds among them), at
    # 50 not (benchmarks/results/2026-12-07-s57-sym-auto-earlier-choice.md). 0: not before n_iter
    auto_symmetry_at: int = 70
    # an imposition keeps a class's axes without refining them once its map has been searched by unit
    # since they were last refined (vdam.unit_search.settled_axes); False: refined at every imposition
    keep_settled_axes: bool = True
    # convergence (vdam.convergence): from n_iter on, every convergence_check_every iterations, the
    # class maps are compared with those of convergence_lag iterations before (mean FSC over the
    # shells up to the run's resolution); below convergence_min_fsc the run goes on in its
    # final-phase settings, at most max_extra_iterations more (-1: n_iter more with one class, none with
    # several; 0: stop at n_iter, as RELION). Measured with one class: converged runs 0.968-0.995 (suite, real
    # beta-gal), an unfinished large C1 particle 0.65-0.91. With K classes each class map is updated from
    # its share of a mini-batch and moves more between iterations: right maps of a two-complex mixture
    # agreed 0.66-0.85 and ran to the cap (benchmarks/results/2026-12-01-classes.md), so the check is
    # not applied to K > 1 unless asked for (--max-extra-iter N)
    # when the evidence flags the map as a likely wrong fold (analysis.ring_spectra: its projections lack
    # angular structure the particles have), a one-class run starts again from new random starts, at
    # most this many times, and keeps the attempt whose map fits the particles best
    # (initial_model.run_initial_model); 0: never
    retries: int = 1
    # a one-class run's retries run with this many classes, so that junk can take a class of its own
    # (initial_model.retry_classes; 1: one class again)
    retry_classes: int = 2
    convergence_check_every: int = 10
    convergence_lag: int = 20
    convergence_min_fsc: float = 0.95
    max_extra_iterations: int = -1

    def iteration_at(self, per_100: float) -> int:
        """The iteration at `per_100` iterations per 100 of the run (at least 1): where the finalists' prunes
        (finalist_prunes) and `--sym auto`'s choice (auto_symmetry_at) fall."""
        return max(1, round(per_100 * self.n_iter / 100))

    def extra_iterations_cap(self) -> int:
        if self.max_extra_iterations >= 0:
            return self.max_extra_iterations
        return self.n_iter if self.n_classes == 1 else 0

    def starts(self) -> int:
        """Random starts raced: n_starts, or by default (-1) starts_for_classes(n_classes)."""
        return self.n_starts if self.n_starts > 0 else starts_for_classes(self.n_classes)

    def significant_cap(self) -> int:
        return self.max_significant if self.max_significant > 0 else 100
