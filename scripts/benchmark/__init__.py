"""brainseg against a MONAI reference pipeline, side by side, on one machine.

One run, the same inputs and the same weights for both sides::

    python -m scripts.benchmark --json benchmark.json          # full run
    python -m scripts.benchmark --quick --json quick.json      # smoke-sized run
    python -m scripts.benchmark --model runs/tissue            # reuse a trained run folder
    python -m scripts.benchmark --report benchmark.json        # the tables of a saved run

What is measured (every pipeline in its own fresh child process, warmed up once
before timing, several cases or patches timed):

* **inference**: input megavoxels per second from reading the file to the written
  mask. brainseg = :class:`~brainseg.infer.predictor.Predictor` + ``write_image``
  through :func:`~brainseg.infer.batch.predict_cases` (what ``brainseg predict``
  does). MONAI reference = LoadImaged, EnsureChannelFirstd, Orientationd("RAS"),
  Spacingd(card spacing), a z-score per channel with brainseg's foreground statistics
  (:func:`~scripts.benchmark.reference.foreground_zscore`: the non-zero voxels of an exact-zero-background scan,
  the threshold mask of a noisy one; every voxel normalised, as brainseg does, where
  NormalizeIntensityd(nonzero) would leave the zeros at 0 and average a noisy
  background in), ``sliding_window_inference`` (roi = card patch, overlap 0.5,
  gaussian, sw_batch_size 4, padded with the background value), softmax, Invertd to the original grid, argmax, SaveImage,
  driving the same network with the same weights (``brainseg.load_model``). When
  the model card's ``postprocess.input_mask`` is ``fill``/``restrict`` the MONAI side
  applies the same rule after its argmax (one ``torch.where``), so both produce the
  same kind of mask; the masks are then compared voxel for voxel (fraction equal,
  Dice between them per label) and each is scored against the reference labels
  (Dice per label; ``dice_diff_max`` is the largest difference of mean Dice).
* **the reference's own placement noise**: after its timed run the MONAI reference
  is rerun (untimed) with its window lattice moved by half its step (as far as a
  lattice can be from itself): the same pipeline, weights and preprocessing, only
  the windows elsewhere. ``reference_placement`` gives MONAI's Dice range over the
  two placements, how many voxels change, and how far brainseg's Dice lies outside
  that range. brainseg tiles the non-zero box (plus ``infer.margin``), so its
  windows sit elsewhere than MONAI's.
* **targets**: each target of the benchmark issue, as measured (``targets`` in the
  JSON, and the line under the table).
* **loader**: augmented training patches per second at 64³ and 128³ with
  nnU-Net-like augmentation: brainseg's ``PatchDataset`` (``AugmentConfig``
  defaults) against a MONAI ``CacheDataset`` over the same preprocessed cases with
  RandCropByPosNegLabeld(pos=1, neg=2), RandRotated, RandZoomd, RandFlipd x3,
  RandGaussianNoised, RandGaussianSmoothd, RandScaleIntensityd,
  RandScaleIntensityFixedMeand (contrast), RandAdjustContrastd (gamma) and
  RandBiasFieldd at the probabilities of our config. Both in the main process
  (0 workers) with one torch thread: the work, not the parallelism.
* **training**: ``data_wait_fraction`` (share of an epoch's wall time spent waiting
  for the next batch) of a short ``configs/demo.yaml`` training run; the same run
  provides the weights benchmarked above.
* **scaling**: brainseg inference time and peak memory against volume size (one
  demo subject resampled to N³ voxels, LPS, voxels 0.9 x the card spacing, so every
  step runs: reorientation, resampling, cropping, windows, inversion).
* **memory**: peak resident set size of each child process
  (``resource.getrusage(RUSAGE_SELF).ru_maxrss``, includes the interpreter, torch
  and the model).
* **GPU** (only when ``torch.cuda.is_available()``): inference fp32 against bf16,
  channels-last on and off, ``torch.compile``, and MONAI on the GPU.

The machine is shared: the 1-minute load average and the CPU time other processes
took during each measurement (``other_cpu``, in cores) are recorded beside every
figure. ``--max-load`` waits (up to ``--max-wait`` s) for a quiet machine first.

The parts, by job: :mod:`~scripts.benchmark.run` (the command line and its settings),
:mod:`~scripts.benchmark.sections` (each section, run in the parent process),
:mod:`~scripts.benchmark.children` (what each measuring child process does),
:mod:`~scripts.benchmark.harness` (child processes, peak memory, the machine's load),
:mod:`~scripts.benchmark.reference` (the MONAI side), :mod:`~scripts.benchmark.compare`
(the arithmetic) and :mod:`~scripts.benchmark.report` (the tables and targets).
"""
