"""Benchmark specimens: maps we build ourselves, with known symmetry, size and box tightness.

Each specimen is an atomic model (a real PDB entry or a synthetic assembly of a real subunit
under the operators of a point group, in RELION's standard frame) turned into a map with gemmi's
electron-scattering potential (`novomap.simulate.structure_density`), band-limited to the map's
Nyquist, damped by a B-factor, and scaled to unit standard deviation inside the particle.

Everything is deterministic: the subunit's orientation and the direction along which it is moved
off the symmetry axes are fixed per specimen, and the distance is the smallest one (0.5 Å steps)
at which no two copies come closer than MIN_CONTACT_A (heavy atoms), so the copies touch and the
assembly reads as a protein shell or ring, not as isolated blobs. For C4, D7 and I the orientation
and direction were picked once by `python benchmarks/specimens.py --search NAME` (the most compact
of 6 x 24 tried) and written into the definition. The pixel size follows from the particle's
diameter and the wanted fraction of the box it fills. The map's band limit is a sphere (soft edge
0.8-1.0 x Nyquist), so that it is as symmetric as its atoms (cc with a rotated copy > 0.998).

Not used: the 50S ribosome file of the shared data (empiar_10076_7.mrc) is 7 raw 320 px particle
images without poses, not a 3D map, so it cannot serve as a truth. The large asymmetric particle is
hb16_c1 instead: 16 haemoglobin tetramers packed without symmetry into a compact ~290 Å aggregate
(source "cluster", `pack_cluster`), a ribosome's size and mass at a ribosome's pixel size in 64 px.
The ~2 MDa end of the suite is the icosahedral hb_i shell.

Maps are cached as MRC files (with a JSON of their figures) under benchmarks/.cache/specimens/,
keyed by a hash of the specimen's definition, so that a changed definition builds a new map.

    from specimens import SPECIMENS, build_specimen
    built = build_specimen(SPECIMENS["adk_o"])   # -> BuiltSpecimen(volume, pixel_size_a, ...)

The suite spans (see SPECIMENS): 60 kDa to 1.8 MDa (heavy-atom mass), particles of 75 to 294 Å, C1, C4, C7, D2, D7, T, O
and I, particle diameter 50-90 % of the box, mask diameter 70-95 % of the box, SNR 0.05-0.1.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data"
CACHE = REPO / "benchmarks" / ".cache" / "specimens"
ADK_CHAIN = DATA / "models" / "4ake_chainA_protein_B20.pdb"
HAEMOGLOBIN = DATA / "models" / "4hhb.pdb"
BETAGAL = DATA / "betagal_5a1a_model" / "5a1a.cif.gz"

#: Bump when the way maps are made changes (invalidates every cached map).
BUILD_VERSION = 3
#: Closest approach (Å, heavy atoms) allowed between two copies of a synthetic assembly.
MIN_CONTACT_A = 3.0
#: Added to twice the largest atom radius to give the particle's diameter (atoms have extent).
ATOM_MARGIN_A = 4.0

# 5A1A (Å) -> RELION's D2 frame of betaGal.mrc (data README): x' = y - 93, y' = -(z - 93), z' = -(x - 93)
_BETAGAL_ROTATION = ((0.0, 1.0, 0.0), (0.0, 0.0, -1.0), (-1.0, 0.0, 0.0))
_BETAGAL_CENTRE_A = (93.0, 93.0, 93.0)


@dataclass(frozen=True)
class Specimen:
    """One benchmark specimen. Fractions are of the box edge; defocus in µm (mean, uniform)."""

    name: str
    description: str
    symmetry: str  # point group imposed by the run and present in the map (RELION name)
    source: str  # "model" (a PDB file as it is), "betagal" (5A1A in RELION's D2 frame), "assembly" or "cluster"
    box: int
    particle_fraction: float  # particle diameter / box edge (sets the pixel size)
    mask_fraction: float  # mask diameter (--particle-diameter) / box edge
    snr: float
    n_particles: int
    defocus_um: tuple[float, float]
    voltage_kv: float = 300.0
    bfactor_a2: float = 80.0
    model: str = ""  # path of the atomic model (source "model"), or of the subunit (source "assembly")
    chains: tuple[str, ...] = ()  # chains of the subunit to keep (empty: all)
    direction: tuple[float, float, float] = (1.0, 0.0, 0.0)  # off-axis direction of the subunit's centre
    orientation_seed: int = 0  # seeds the subunit's fixed random orientation (each copy's, for "cluster")
    cluster_copies: int = 0  # source "cluster": copies of the subunit, packed without symmetry
    # source "cluster": "compact" (each copy docks where the aggregate stays roundest) or "chain" (each
    # docks on the last one, about along x: an elongated particle)
    cluster_shape: str = "compact"

    def key(self) -> str:
        """Hash of everything that shapes the map (not the simulation settings)."""
        shaping = {
            k: v
            for k, v in asdict(self).items()
            if k in (
                "symmetry", "source", "box", "particle_fraction", "bfactor_a2", "model", "chains", "direction", "orientation_seed", "cluster_copies",
                "cluster_shape",
            )
        }
        shaping["version"] = BUILD_VERSION
        if not shaping["cluster_copies"]:
            del shaping["cluster_copies"]  # keeps the keys (cached maps, data sets) of the older specimens
        if shaping["cluster_shape"] == "compact":
            del shaping["cluster_shape"]  # likewise
        if shaping["model"]:
            shaping["model"] = Path(shaping["model"]).name
        return hashlib.sha1(json.dumps(shaping, sort_keys=True).encode()).hexdigest()[:10]


@dataclass
class BuiltSpecimen:
    specimen: Specimen
    volume: torch.Tensor  # (box, box, box) float32, z y x
    pixel_size_a: float
    diameter_a: float  # particle diameter (atoms, plus ATOM_MARGIN_A)
    mask_diameter_a: float
    mass_kda: float  # heavy atoms only (hydrogens add about 8 %)
    copies: int
    path: Path

    @property
    def particle_fraction(self) -> float:
        return self.diameter_a / (self.specimen.box * self.pixel_size_a)


def _spec(**kwargs) -> Specimen:
    return Specimen(**kwargs)


#: The suite. Order: from small to large.
SPECIMENS: dict[str, Specimen] = {
    s.name: s
    for s in [
        _spec(
            name="hb_c1",
            description="haemoglobin 4HHB (a2b2 with hemes), run in C1: small, pseudo-D2, low SNR",
            symmetry="C1", source="model", model=str(HAEMOGLOBIN), box=64,
            particle_fraction=0.5, mask_fraction=0.7, snr=0.05, n_particles=2000, defocus_um=(1.2, 2.8),
        ),
        _spec(
            name="adk_c4",
            description="C4 tetramer of adenylate kinase (4AKE chain A), off-axis: about 100 kDa",
            symmetry="C4", source="assembly", model=str(ADK_CHAIN), box=64,
            particle_fraction=0.7, mask_fraction=0.85, snr=0.07, n_particles=1500, defocus_um=(1.0, 2.5),
            # placements from specimens.py --search (the most compact of 6 x 24 tried): the copies touch
            direction=(-0.78, 0.624, 0.042), orientation_seed=4,
        ),
        _spec(
            name="adk_c7",
            description="C7 ring of 4AKE chain A, very tight box (particle 90 %, mask 95 %)",
            symmetry="C7", source="assembly", model=str(ADK_CHAIN), box=64,
            particle_fraction=0.9, mask_fraction=0.95, snr=0.08, n_particles=1500, defocus_um=(1.0, 2.5),
            direction=(0.95, 0.1, 0.2), orientation_seed=7,
        ),
        _spec(
            name="adk_t",
            description="tetrahedral (T) 12-mer shell of 4AKE chain A, loose box",
            symmetry="T", source="assembly", model=str(ADK_CHAIN), box=64,
            particle_fraction=0.6, mask_fraction=0.8, snr=0.1, n_particles=1000, defocus_um=(0.8, 2.2),
            direction=(0.3, 0.5, 0.8), orientation_seed=12,
        ),
        _spec(
            name="adk_d7",
            description="D7 double ring (14-mer) of 4AKE chain A, GroEL-like",
            symmetry="D7", source="assembly", model=str(ADK_CHAIN), box=64,
            particle_fraction=0.75, mask_fraction=0.9, snr=0.06, n_particles=1500, defocus_um=(1.0, 2.5),
            # a hand-picked direction gave two separate rings; this one (--search) makes them touch
            direction=(0.769, 0.34, -0.542), orientation_seed=3,
        ),
        _spec(
            name="betagal_d2",
            description="beta-galactosidase 5A1A (D2) in RELION's D2 frame, tutorial-like",
            symmetry="D2", source="betagal", model=str(BETAGAL), box=64,
            particle_fraction=0.8, mask_fraction=0.88, snr=0.1, n_particles=1500, defocus_um=(0.8, 1.3),
            voltage_kv=200.0, bfactor_a2=100.0,
        ),
        _spec(
            name="adk_o",
            description="octahedral (O) 24-mer shell of 4AKE chain A, ferritin-like, tight box, low SNR",
            symmetry="O", source="assembly", model=str(ADK_CHAIN), box=64,
            particle_fraction=0.85, mask_fraction=0.95, snr=0.05, n_particles=1000, defocus_um=(0.8, 2.2),
            direction=(0.2, 0.45, 0.87), orientation_seed=24,
        ),
        _spec(
            name="hb16_c1",
            description="asymmetric aggregate of 16 haemoglobin tetramers (4HHB), ribosome-sized: about 1 MDa, C1",
            symmetry="C1", source="cluster", model=str(HAEMOGLOBIN), box=64,
            particle_fraction=0.8, mask_fraction=0.9, snr=0.07, n_particles=1500, defocus_um=(1.0, 2.5),
            cluster_copies=16, orientation_seed=16,
        ),
        _spec(
            name="hb_i",
            description="icosahedral (I, RELION's I2 frame) 60-mer shell of the haemoglobin a1b1 dimer: about 2 MDa",
            symmetry="I", source="assembly", model=str(HAEMOGLOBIN), chains=("A", "B"), box=80,
            particle_fraction=0.75, mask_fraction=0.9, snr=0.08, n_particles=1000, defocus_um=(0.8, 2.0),
            # the most compact of 6 orientations x 24 directions (specimens.py --search hb_i): a
            # generic direction lands near one of I's many axes and gives a loose 390 Å shell
            direction=(-0.356, -0.814, -0.458), orientation_seed=2,
        ),
    ]
}


#: Held out: specimens no default was ever chosen on, run as a new user would (issue 10's "specimens
#: the suite has never seen"): other boxes (72-128 px), other groups (C3, D3), a ~120 kDa C1 pair and
#: a ~360 kDa C1 aggregate. Defined once (session 14) before any run; not to be tuned on. Session 19 added
#: a tight C2 dimer (hb_c2_tight) the same way, for the search over one asymmetric unit.
HELD_OUT: dict[str, Specimen] = {
    s.name: s
    for s in [
        _spec(
            name="hb2_c1",
            description="two haemoglobin tetramers (4HHB) packed without symmetry: about 120 kDa, C1, 72 px",
            symmetry="C1", source="cluster", model=str(HAEMOGLOBIN), box=72,
            particle_fraction=0.65, mask_fraction=0.85, snr=0.08, n_particles=2000, defocus_um=(1.0, 2.5),
            cluster_copies=2, orientation_seed=21,
        ),
        _spec(
            name="adk_d3",
            description="D3 hexamer of 4AKE chain A: about 130 kDa, 96 px",
            symmetry="D3", source="assembly", model=str(ADK_CHAIN), box=96,
            particle_fraction=0.65, mask_fraction=0.85, snr=0.06, n_particles=1500, defocus_um=(1.0, 2.5),
            # from specimens.py --search adk_d3 (the third most compact: the first is adk_d7's placement)
            direction=(-0.74, 0.249, -0.625), orientation_seed=0,
        ),
        _spec(
            name="hb_c3",
            description="C3 trimer of haemoglobin tetramers (4HHB): about 180 kDa, 128 px, loose box",
            symmetry="C3", source="assembly", model=str(HAEMOGLOBIN), box=128,
            particle_fraction=0.55, mask_fraction=0.75, snr=0.08, n_particles=1500, defocus_um=(1.0, 2.5),
            direction=(0.154, -0.987, -0.042), orientation_seed=1,  # specimens.py --search hb_c3
        ),
        _spec(
            # added in session 19, before any run, for the search over one asymmetric unit (C2-D2):
            # a dimer filling nearly its whole box, at low SNR
            name="hb_c2_tight",
            description="C2 dimer of haemoglobin tetramers (4HHB): about 130 kDa, 72 px, tight box",
            symmetry="C2", source="assembly", model=str(HAEMOGLOBIN), box=72,
            particle_fraction=0.88, mask_fraction=0.95, snr=0.06, n_particles=2000, defocus_um=(1.0, 2.5),
            direction=(0.02, 0.956, 0.292), orientation_seed=0,  # specimens.py --search hb_c2_tight
        ),
        _spec(
            name="hb6_c1",
            description="six haemoglobin tetramers packed without symmetry: about 360 kDa, C1, 100 px",
            symmetry="C1", source="cluster", model=str(HAEMOGLOBIN), box=100,
            particle_fraction=0.75, mask_fraction=0.9, snr=0.06, n_particles=1500, defocus_um=(1.0, 2.5),
            cluster_copies=6, orientation_seed=6,
        ),
        # added in session 28, before any run: a group no specimen had (D5, C6) and an input box larger
        # than any before (160 px: the job works on a binned grid and writes at the input's)
        _spec(
            name="adk_d5",
            description="D5 decamer of 4AKE chain A: about 220 kDa, 160 px, loose box, low SNR",
            symmetry="D5", source="assembly", model=str(ADK_CHAIN), box=160,
            particle_fraction=0.6, mask_fraction=0.8, snr=0.05, n_particles=1500, defocus_um=(1.0, 2.5),
            # specimens.py --search adk_d5: the second most compact (the first is adk_d7's placement)
            direction=(-0.884, 0.096, 0.458), orientation_seed=3,
        ),
        _spec(
            name="hb_c6",
            description="C6 ring of haemoglobin tetramers (4HHB): about 360 kDa, 96 px",
            symmetry="C6", source="assembly", model=str(HAEMOGLOBIN), box=96,
            particle_fraction=0.8, mask_fraction=0.9, snr=0.07, n_particles=1500, defocus_um=(1.0, 2.5),
            direction=(0.99, 0.066, 0.125), orientation_seed=0,  # specimens.py --search hb_c6
        ),
        # added in session 34, before any run: boxes smaller than any before (particles binned hard
        # for 2D classification, as users bring them); the working grid is then the input's own
        _spec(
            name="betagal_d2_40",
            description="beta-galactosidase (5A1A) in RELION's D2 frame at 40 px (~6.5 Å/px), mid SNR",
            symmetry="D2", source="betagal", model=str(BETAGAL), box=40,
            particle_fraction=0.8, mask_fraction=0.9, snr=0.08, n_particles=1500, defocus_um=(0.8, 2.0),
        ),
        _spec(
            name="hb_c1_36",
            description="haemoglobin 4HHB run in C1 at 36 px (~3.6 Å/px): a small particle in a small box",
            symmetry="C1", source="model", model=str(HAEMOGLOBIN), box=36,
            particle_fraction=0.55, mask_fraction=0.75, snr=0.08, n_particles=1500, defocus_um=(1.0, 2.5),
        ),
        # added in session 39, before any run: an elongated particle (~3:1), which no specimen was, C1
        _spec(
            name="hb4_rod",
            description="four haemoglobin tetramers (4HHB) docked end to end without symmetry: about 240 kDa, a ~3:1 rod (240 x 86 Å), C1, 96 px",
            symmetry="C1", source="cluster", model=str(HAEMOGLOBIN), box=96,
            particle_fraction=0.8, mask_fraction=0.9, snr=0.07, n_particles=1500, defocus_um=(1.0, 2.5),
            cluster_copies=4, orientation_seed=39, cluster_shape="chain",
        ),
        # added after hb_c1_36's first run (1.90x): haemoglobin alone is pseudo-D2, the suite's known
        # unsolved case (README), so a small C1 particle without a pseudo-symmetry, in a small box
        _spec(
            name="hb2_c1_40",
            description="two haemoglobin tetramers (4HHB) packed without symmetry: about 120 kDa, C1, 40 px",
            symmetry="C1", source="cluster", model=str(HAEMOGLOBIN), box=40,
            particle_fraction=0.65, mask_fraction=0.85, snr=0.08, n_particles=1500, defocus_um=(1.0, 2.5),
            cluster_copies=2, orientation_seed=21,
        ),
        # added in session 50, before any run: a group no specimen had (D4) in a box as users extract
        # them at a fine pixel (192 px, binned for the work), and a tight tetrahedral shell at low SNR
        # (the false-minimum case was a tight high-symmetry box)
        _spec(
            name="adk_d4_192",
            description="D4 octamer of 4AKE chain A: about 175 kDa, 192 px input at a fine pixel, loose box, low SNR",
            symmetry="D4", source="assembly", model=str(ADK_CHAIN), box=192,
            particle_fraction=0.55, mask_fraction=0.75, snr=0.05, n_particles=2000, defocus_um=(0.8, 2.2),
            # specimens.py --search adk_d4_192: the third most compact (the first two are adk_d7's and adk_d3's placements)
            direction=(-0.152, -0.766, 0.625), orientation_seed=4,
        ),
        # added in session 54, before any run: every C1 specimen so far was built from haemoglobin; one
        # chain of beta-galactosidase is a ~116 kDa asymmetric particle of another protein, no pseudo-symmetry
        _spec(
            name="betagal_mono_c1",
            description="one chain (A) of beta-galactosidase 5A1A: about 116 kDa, C1, 64 px",
            symmetry="C1", source="model", model=str(BETAGAL), chains=("A",), box=64,
            particle_fraction=0.7, mask_fraction=0.85, snr=0.08, n_particles=1500, defocus_um=(1.0, 2.5),
        ),
        _spec(
            name="hb_t_tight",
            description="T shell of twelve haemoglobin tetramers (4HHB): about 770 kDa, 72 px, tight box, low SNR",
            symmetry="T", source="assembly", model=str(HAEMOGLOBIN), box=72,
            particle_fraction=0.9, mask_fraction=0.95, snr=0.05, n_particles=1000, defocus_um=(1.0, 2.5),
            direction=(-0.675, -0.707, 0.208), orientation_seed=3,  # specimens.py --search hb_t_tight
        ),
        # added in session 59, before any run: groups no specimen had (C5, D6), an odd input box (75 px:
        # the job works at 74 px and writes at 75), an icosahedral shell filling its box at low SNR, and
        # a C1 particle of three tetramers extracted at a fine pixel in a large box at the lowest SNR
        _spec(
            name="adk_c5_75",
            description="C5 pentamer of 4AKE chain A: about 110 kDa, odd 75 px box",
            symmetry="C5", source="assembly", model=str(ADK_CHAIN), box=75,
            particle_fraction=0.7, mask_fraction=0.85, snr=0.06, n_particles=1500, defocus_um=(1.0, 2.5),
            direction=(-0.78, 0.624, 0.042), orientation_seed=4,  # specimens.py --search adk_c5_75 (adk_c4's placement)
        ),
        _spec(
            name="adk_i_tight",
            description="I shell of 4AKE chain A (60 copies): about 1.4 MDa, 96 px, tight box, low SNR",
            symmetry="I", source="assembly", model=str(ADK_CHAIN), box=96,
            particle_fraction=0.9, mask_fraction=0.95, snr=0.05, n_particles=1000, defocus_um=(0.8, 2.2),
            direction=(-0.95, -0.234, -0.208), orientation_seed=1,  # specimens.py --search adk_i_tight
        ),
        _spec(
            name="hb_d6",
            description="D6 assembly of twelve haemoglobin tetramers (4HHB): about 770 kDa, 80 px",
            symmetry="D6", source="assembly", model=str(HAEMOGLOBIN), box=80,
            particle_fraction=0.8, mask_fraction=0.9, snr=0.06, n_particles=1500, defocus_um=(1.0, 2.5),
            direction=(0.769, 0.34, -0.542), orientation_seed=1,  # specimens.py --search hb_d6
        ),
        _spec(
            name="hb3_c1_128",
            description="three haemoglobin tetramers (4HHB) packed without symmetry: about 190 kDa, C1, 128 px at a fine pixel, low SNR",
            symmetry="C1", source="cluster", model=str(HAEMOGLOBIN), box=128,
            particle_fraction=0.6, mask_fraction=0.8, snr=0.05, n_particles=2000, defocus_um=(1.0, 2.5),
            cluster_copies=3, orientation_seed=59,
        ),
        # added in session 63, before any run: O built of another protein than adenylate kinase (the
        # haemoglobin a1b1 dimer), a small C3 trimer in a tight box smaller than any symmetric one before
        # (56 px), and a ~350 kDa C1 particle of three beta-galactosidase chains (no pseudo-symmetry:
        # three of D2's four chains), each tried as a new user would, with the group given
        _spec(
            name="hb_o",
            description="octahedral (O) 24-mer shell of the haemoglobin a1b1 dimer (4HHB): about 770 kDa, 96 px",
            symmetry="O", source="assembly", model=str(HAEMOGLOBIN), chains=("A", "B"), box=96,
            particle_fraction=0.7, mask_fraction=0.85, snr=0.06, n_particles=1000, defocus_um=(1.0, 2.5),
            direction=(-0.402, -0.27, -0.875), orientation_seed=2,  # specimens.py --search hb_o
        ),
        _spec(
            name="adk_c3_tight",
            description="C3 trimer of 4AKE chain A: about 72 kDa, 56 px, tight box (particle 90 %, mask 95 %)",
            symmetry="C3", source="assembly", model=str(ADK_CHAIN), box=56,
            particle_fraction=0.9, mask_fraction=0.95, snr=0.07, n_particles=1500, defocus_um=(1.0, 2.5),
            direction=(-0.78, 0.624, 0.042), orientation_seed=3,  # specimens.py --search adk_c3_tight
        ),
        _spec(
            name="betagal_abc_c1",
            description="three chains (A, B, C) of beta-galactosidase 5A1A: about 350 kDa, C1, 96 px, low SNR",
            symmetry="C1", source="model", model=str(BETAGAL), chains=("A", "B", "C"), box=96,
            particle_fraction=0.75, mask_fraction=0.9, snr=0.06, n_particles=1500, defocus_um=(1.0, 2.5),
        ),
    ]
}


def specimen_named(name: str) -> Specimen:
    """A specimen of the suite or of the held-out set."""
    return SPECIMENS[name] if name in SPECIMENS else HELD_OUT[name]


# --------------------------------------------------------------------------------------------
# Atomic models


def _read_structure(path: str, chains: tuple[str, ...] = ()):
    import gemmi

    structure = gemmi.read_structure(str(path))
    structure.remove_hydrogens()
    structure.remove_waters()
    # ligands (the hemes of haemoglobin) are kept on purpose
    if chains:
        # names first: gemmi's chain objects are views into a vector that removal shifts
        for name in {chain.name for chain in structure[0]} - set(chains):
            structure[0].remove_chain(name)
    structure.remove_empty_chains()
    # keep the first model only
    while len(structure) > 1:
        del structure[1]
    return structure


def _positions(model) -> np.ndarray:
    return np.array([atom.pos.tolist() for chain in model for residue in chain for atom in residue])


def _ca_mask(model) -> np.ndarray:
    return np.array([atom.name == "CA" for chain in model for residue in chain for atom in residue])


def _fixed_rotation(seed: int) -> np.ndarray:
    """A rotation matrix from a seeded Gaussian quaternion (the subunit's orientation)."""
    q = np.random.default_rng(seed).standard_normal(4)
    w, x, y, z = q / np.linalg.norm(q)
    return np.array(
        [
            [1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
            [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
            [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)],
        ]
    )


def _closest_approach(points: np.ndarray, operators: np.ndarray) -> float:
    """Smallest distance between copy 0 (the identity) of `points` (P, 3) and every other copy."""
    from scipy.spatial import cKDTree

    if operators.shape[0] < 2:
        return math.inf
    others = np.einsum("gij,pj->gpi", operators[1:], points).reshape(-1, 3)
    distances, _ = cKDTree(others).query(points, k=1)
    return float(distances.min())


def touching_radius(
    points: np.ndarray, ca: np.ndarray, unit: np.ndarray, clearance, give_up_at: float = math.inf
) -> float:
    """Smallest distance r (Å, 0.5 Å steps) along the unit vector `unit` at which `points` (P, 3)
    moved by r * unit clear their neighbours: clearance(moved points) is the closest approach (Å).

    Coarse scan on the C-alpha atoms `ca` (2 Å steps, >= 4 Å apart), then 0.5 Å steps on all heavy
    atoms (>= MIN_CONTACT_A). Returns math.inf once the coarse scan reaches `give_up_at`.
    """
    radius = 0.0
    while radius < give_up_at and clearance(ca + radius * unit) < 4.0:
        radius += 2.0
    if radius >= give_up_at:
        return math.inf
    radius = max(0.0, radius - 2.0)
    while clearance(points + radius * unit) < MIN_CONTACT_A:
        radius += 0.5
    return radius


def place_subunit(points: np.ndarray, ca: np.ndarray, operators: np.ndarray, direction: np.ndarray) -> float:
    """Smallest distance r (Å, 0.5 Å steps) along `direction` at which copies of `points` (centred
    at 0, already rotated) moved by r * direction and then by each operator do not clash."""
    unit = direction / np.linalg.norm(direction)
    return touching_radius(points, points[ca], unit, lambda moved: _closest_approach(moved, operators))


def _sphere_directions(count: int) -> np.ndarray:
    """`count` unit vectors spread evenly over the sphere (Fibonacci lattice), (count, 3)."""
    index = np.arange(count) + 0.5
    z = 1 - 2 * index / count
    phi = math.pi * (3 - math.sqrt(5)) * index
    rho = np.sqrt(1 - z * z)
    return np.stack([rho * np.cos(phi), rho * np.sin(phi), z], 1)


def search_placement(specimen: Specimen, seeds: int = 6, directions: int = 24) -> list[tuple[float, int, tuple]]:
    """Compact placements of a subunit: (C-alpha clash-free radius, orientation seed, direction),
    best first, over `seeds` orientations x `directions` directions.

    Run once per assembly (``python benchmarks/specimens.py --search NAME``); the best pair is then
    written into the specimen's definition, so building a map involves no search.
    """
    from novomap.symmetry.groups import point_group

    subunit = _read_structure(specimen.model, specimen.chains)
    centre = np.array(subunit[0].calculate_center_of_mass().tolist())
    ca = (_positions(subunit[0]) - centre)[_ca_mask(subunit[0])]
    operators = point_group(specimen.symmetry).operators.numpy()
    found = []
    for seed in range(seeds):
        points = ca @ _fixed_rotation(seed).T
        for unit in _sphere_directions(directions):
            radius = 0.0
            while _closest_approach(points + radius * unit, operators) < 4.0:
                radius += 1.0
            found.append((radius, seed, tuple(round(float(v), 3) for v in unit)))
    return sorted(found)


def specimen_structure(specimen: Specimen):
    """The specimen's atoms (gemmi Structure), centred on the symmetry origin in its RELION frame.

    Returns (structure, number of copies of the subunit).
    """
    import gemmi

    from novomap.symmetry.groups import point_group

    if specimen.source == "betagal":
        structure = _read_structure(specimen.model)
        rotation = np.array(_BETAGAL_ROTATION)
        shift = -rotation @ np.array(_BETAGAL_CENTRE_A)
        structure[0].transform_pos_and_adp(gemmi.Transform(gemmi.Mat33(rotation.tolist()), gemmi.Vec3(*shift.tolist())))
        return structure, 1
    if specimen.source == "model":
        structure = _read_structure(specimen.model, specimen.chains)
        centre = np.array(structure[0].calculate_center_of_mass().tolist())
        structure[0].transform_pos_and_adp(gemmi.Transform(gemmi.Mat33(np.eye(3).tolist()), gemmi.Vec3(*(-centre).tolist())))
        return structure, 1
    if specimen.source == "cluster":
        return cluster_structure(specimen), specimen.cluster_copies
    if specimen.source != "assembly":
        raise ValueError(f"unknown specimen source {specimen.source!r}")

    subunit = _read_structure(specimen.model, specimen.chains)
    centre = np.array(subunit[0].calculate_center_of_mass().tolist())
    orientation = _fixed_rotation(specimen.orientation_seed)
    points = (_positions(subunit[0]) - centre) @ orientation.T
    operators = point_group(specimen.symmetry).operators.numpy()
    direction = np.array(specimen.direction, dtype=np.float64)
    radius = place_subunit(points, _ca_mask(subunit[0]), operators, direction)
    offset = radius * direction / np.linalg.norm(direction)

    # atom p -> g (R (p - c) + d)
    transforms = [(operator @ orientation, operator @ (offset - orientation @ centre)) for operator in operators]
    return copies_structure(specimen.name, subunit[0], transforms), int(operators.shape[0])


def copies_structure(name: str, subunit_model, transforms: list[tuple[np.ndarray, np.ndarray]]):
    """A gemmi Structure holding one copy of `subunit_model` per (rotation (3, 3), translation (3,))
    in `transforms` (atom p -> rotation p + translation), chains renamed with the copy's index."""
    import gemmi

    structure = gemmi.Structure()
    structure.name = name
    model = gemmi.Model("1")
    for index, (rotation, translation) in enumerate(transforms):
        copy = subunit_model.clone()
        copy.transform_pos_and_adp(gemmi.Transform(gemmi.Mat33(rotation.tolist()), gemmi.Vec3(*translation.tolist())))
        for chain in copy:
            chain.name = f"{chain.name}{index}"
            model.add_chain(chain)
    structure.add_model(model)
    structure.setup_entities()
    return structure


def pack_cluster(
    points: np.ndarray, ca: np.ndarray, copies: int, seed: int, directions_per_copy: int = 8, chain: bool = False
) -> list[tuple[np.ndarray, np.ndarray]]:
    """A compact asymmetric aggregate: (rotation, shift) of each of `copies` copies of `points`
    (P, 3), centred at 0, each turned by its own seeded random rotation.

    Copies are added one at a time. Each is tried along `directions_per_copy` seeded random
    directions from the current aggregate's centre, at the smallest radius where it clears every
    copy already placed (`touching_radius`), and the smallest of those radii is kept: the copy docks where the aggregate
    stays most compact (one direction each gives a loose, branched aggregate, unlike a complex).
    chain: each copy docks instead on the last one placed, along a seeded direction within ~17 degrees
    of +x, so the copies form an elongated rod.
    """
    from scipy.spatial import cKDTree

    rng = np.random.default_rng(seed)
    placed: list[tuple[np.ndarray, np.ndarray]] = []
    atoms = np.empty((0, 3))
    for _ in range(copies):
        rotation = _fixed_rotation(int(rng.integers(1 << 30)))
        units = rng.standard_normal((directions_per_copy, 3))
        units /= np.linalg.norm(units, axis=1, keepdims=True)
        moved, moved_ca = points @ rotation.T, ca @ rotation.T
        shift = np.zeros(3)
        if chain:
            units = np.array([1.0, 0.0, 0.0]) + 0.3 * rng.standard_normal((1, 3))
            units /= np.linalg.norm(units, axis=1, keepdims=True)
        if len(atoms):
            tree, centre = cKDTree(atoms), (placed[-1][1] if chain else atoms.mean(0))

            def clearance(moved_points: np.ndarray) -> float:
                return float(tree.query(moved_points + centre, k=1)[0].min())

            best = math.inf
            for unit in units:
                radius = touching_radius(moved, moved_ca, unit, clearance, give_up_at=best)
                if radius < best:
                    best, shift = radius, centre + radius * unit
        placed.append((rotation, shift))
        atoms = np.concatenate([atoms, moved + shift])
    middle = atoms.mean(0)
    return [(rotation, shift - middle) for rotation, shift in placed]


def cluster_structure(specimen: Specimen):
    """The atoms of a "cluster" specimen (gemmi Structure), centred on their centroid."""
    subunit = _read_structure(specimen.model, specimen.chains)
    centre = np.array(subunit[0].calculate_center_of_mass().tolist())
    points = _positions(subunit[0]) - centre
    placements = pack_cluster(
        points, points[_ca_mask(subunit[0])], specimen.cluster_copies, specimen.orientation_seed, chain=specimen.cluster_shape == "chain"
    )
    # atom p -> R (p - c) + s
    transforms = [(rotation, shift - rotation @ centre) for rotation, shift in placements]
    return copies_structure(specimen.name, subunit[0], transforms)


# --------------------------------------------------------------------------------------------
# Maps


def _make_volume(specimen: Specimen) -> tuple[torch.Tensor, float, float, float, int]:
    """(volume, pixel size, particle diameter, heavy-atom mass in kDa, copies) of a specimen."""
    from novomap.simulate import fourier_resize, structure_density

    structure, copies = specimen_structure(specimen)
    points = _positions(structure[0])
    diameter = 2.0 * float(np.linalg.norm(points, axis=1).max()) + ATOM_MARGIN_A
    pixel = round(diameter / (specimen.particle_fraction * specimen.box), 3)
    volume = structure_density(structure, specimen.box, pixel, centre_a=(0.0, 0.0, 0.0))
    volume = spherical_band_limit(fourier_resize(volume.double(), specimen.box, specimen.bfactor_a2, pixel))
    inside = particle_sphere(specimen.box, diameter / pixel)
    volume = volume / volume[inside].std()
    mass = structure[0].calculate_mass() / 1000.0
    return volume.float(), pixel, diameter, mass, copies


def spherical_band_limit(volume: torch.Tensor) -> torch.Tensor:
    """Remove every Fourier component beyond Nyquist (|k| >= N/2), with a soft edge: a cube-shaped
    band limit (what a Fourier crop leaves) is not rotation-invariant, and its corners alone cost a
    7-fold map ~0.01 in its cc with the rotated copy."""
    n = volume.shape[-1]
    spectrum = torch.fft.fftn(volume)
    k = torch.fft.fftfreq(n, dtype=torch.float64) * n
    radius = torch.sqrt(k[:, None, None] ** 2 + k[None, :, None] ** 2 + k[None, None, :] ** 2)
    # raised-cosine edge from 0.8 to 1.0 x Nyquist: a hard cut would ring all over the solvent
    edge = ((radius / (n / 2) - 0.8) / 0.2).clamp(0.0, 1.0)
    return torch.fft.ifftn(spectrum * (0.5 + 0.5 * torch.cos(math.pi * edge))).real


def particle_sphere(box: int, diameter_px: float) -> torch.Tensor:
    """(box, box, box) bool: voxels within diameter/2 of the centre voxel box//2."""
    axis = torch.arange(box, dtype=torch.float64) - box // 2
    r2 = axis[:, None, None] ** 2 + axis[None, :, None] ** 2 + axis[None, None, :] ** 2
    return r2 <= (diameter_px / 2) ** 2


def build_specimen(specimen: Specimen, cache: Path | None = CACHE, rebuild: bool = False) -> BuiltSpecimen:
    """The specimen's map, from the cache when it is there (`cache` None: always build, no file)."""
    from novomap.io.mrc import read_map, write_map

    path = (cache if cache is not None else Path(".")) / f"{specimen.name}-{specimen.key()}.mrc"
    meta_path = path.with_suffix(".json")
    if cache is not None and not rebuild and path.is_file() and meta_path.is_file():
        meta = json.loads(meta_path.read_text())
        data, pixel = read_map(path)
        volume = torch.from_numpy(np.array(data, dtype=np.float32))
    else:
        volume, pixel, diameter, mass, copies = _make_volume(specimen)
        meta = {"pixel_size_a": pixel, "diameter_a": diameter, "mass_kda": mass, "copies": copies}
        if cache is not None:
            cache.mkdir(parents=True, exist_ok=True)
            write_map(path, volume, pixel)
            meta_path.write_text(json.dumps(meta, indent=1) + "\n")
    pixel = float(meta["pixel_size_a"])
    return BuiltSpecimen(
        specimen=specimen,
        volume=volume,
        pixel_size_a=pixel,
        diameter_a=float(meta["diameter_a"]),
        mask_diameter_a=round(specimen.mask_fraction * specimen.box * pixel, 1),
        mass_kda=float(meta["mass_kda"]),
        copies=int(meta["copies"]),
        path=path,
    )


# --------------------------------------------------------------------------------------------
# Checks (used by the test and printed by `python benchmarks/specimens.py`)


def symmetry_cc(volume: torch.Tensor, symmetry: str, operators_checked: int = 8) -> float:
    """Smallest correlation between the map and its copy moved by an operator of the group.

    The first `operators_checked` non-identity operators are used: the group's closure lists its
    generators first, and a map invariant under the generators is invariant under the group.
    The map is Fourier-upsampled 2x first, so that trilinear interpolation (rotate_volume) does not
    blur the high-resolution content of a map sampled near Nyquist (that alone costs ~0.02 in cc).
    """
    from novomap.maps.transform import rotate_volume
    from novomap.simulate import fourier_resize
    from novomap.symmetry.groups import point_group

    operators = point_group(symmetry).operators[1 : 1 + operators_checked]
    if operators.shape[0] == 0:
        return 1.0
    v = fourier_resize(volume.double(), 2 * volume.shape[-1])
    a = v - v.mean()
    worst = 1.0
    for start in range(0, operators.shape[0], 2):
        moved = rotate_volume(v, operators[start : start + 2])
        b = moved - moved.mean(dim=(1, 2, 3), keepdim=True)
        cc = (a * b).sum(dim=(1, 2, 3)) / (a.norm() * b.flatten(1).norm(dim=1))
        worst = min(worst, float(cc.min()))
    return worst


def fraction_outside(volume: torch.Tensor, diameter_px: float) -> float:
    """Fraction of the map's positive density beyond a sphere of `diameter_px` about the centre."""
    positive = volume.double().clamp(min=0)
    inside = particle_sphere(volume.shape[-1], diameter_px)
    return float(positive[~inside].sum() / positive.sum())


def describe(built: BuiltSpecimen) -> dict:
    s = built.specimen
    return {
        "name": s.name,
        "symmetry": s.symmetry,
        "copies": built.copies,
        "mass_kda": round(built.mass_kda, 1),
        "box": s.box,
        "pixel_size_a": built.pixel_size_a,
        "diameter_a": round(built.diameter_a, 1),
        "particle_fraction": round(built.particle_fraction, 2),
        "mask_diameter_a": built.mask_diameter_a,
        "mask_fraction": s.mask_fraction,
        "snr": s.snr,
        "n_particles": s.n_particles,
        "defocus_um": list(s.defocus_um),
        "voltage_kv": s.voltage_kv,
        "description": s.description,
    }


def main() -> None:
    import argparse
    import time

    parser = argparse.ArgumentParser(description="build (or load) the specimen maps and check them")
    parser.add_argument("--specimens", nargs="*", default=list(SPECIMENS), metavar="NAME")
    parser.add_argument("--rebuild", action="store_true")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--search", metavar="NAME", default=None, help="print compact placements for an assembly")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.search:
        for radius, seed, direction in search_placement(specimen_named(args.search))[:5]:
            print(f"radius {radius:.0f} Å  orientation_seed={seed}  direction={direction}")
        return
    for name in args.specimens:
        start = time.perf_counter()
        built = build_specimen(specimen_named(name), rebuild=args.rebuild)
        seconds = time.perf_counter() - start
        figures = describe(built)
        figures["symmetry_cc"] = round(symmetry_cc(built.volume, built.specimen.symmetry), 4)
        figures["outside_mask"] = round(fraction_outside(built.volume, built.mask_diameter_a / built.pixel_size_a), 4)
        figures["seconds"] = round(seconds, 1)
        print(json.dumps(figures), flush=True)


if __name__ == "__main__":
    main()
