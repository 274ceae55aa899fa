"""Config keys of r2ios_d2: every ``MODEL.R2IOS.*`` and ``MODEL.VGG.*`` key with its default.

The paper's own settings live in the YAML files under ``configs/``; the defaults here are
those of the paper where it is clear (Liang et al., CVPR 2016, Sec. 3-4) and documented
choices where it is not (see the README's configuration reference).
"""

from detectron2.config import CfgNode as CN


def add_r2ios_config(cfg: CN) -> None:
    """Add the R2-IOS config keys to ``cfg`` in place (idempotent).

    Args:
        cfg: a detectron2 config, e.g. from ``detectron2.config.get_cfg()``.
    """
    if "R2IOS" in cfg.MODEL:
        return
    _add_vgg_config(cfg)
    _add_r2ios_model_config(cfg)
    _add_training_config(cfg)
    _add_r2ios_test_config(cfg)
    _add_data_and_solver_config(cfg)
    _add_run_config(cfg)


def _add_vgg_config(_C: CN) -> None:
    # ---------------------------------------------------------------- VGG-16 two-branch backbone
    _C.MODEL.VGG = CN()
    # Channel multiplier of every conv/fc layer (1.0 = VGG-16; tests use 1/8 or 1/16).
    _C.MODEL.VGG.WIDTH = 1.0
    # Output channels of the seg branch's fc6/fc7 convs at WIDTH 1 (DeepLab-LargeFOV: 1024).
    _C.MODEL.VGG.SEG_FC_DIM = 1024
    # Dilation of the seg branch's 3x3 fc6 conv (DeepLab-LargeFOV: 12).
    _C.MODEL.VGG.SEG_FC6_DILATION = 12
    # Dilation of the seg branch's conv5 layers (pool4 removed -> 2).
    _C.MODEL.VGG.SEG_CONV5_DILATION = 2
    # Where the two branches part. False: after conv3 (each branch has its own conv4, DESIGN
    # 2.1). True: conv4 is shared too (one conv4_1..conv4_3 at stride 8; det then pools and runs
    # its conv5, seg runs its dilated conv5), so the mask losses also train the conv4 that the
    # box branch pools from, and conv4 runs once. The paper leaves it open ("several
    # convolutional layers" feed both sub-networks).
    _C.MODEL.VGG.SHARED_CONV4 = False
    # Feature maps the backbone returns: "det" (stride 16) and/or "seg" (stride 8).
    _C.MODEL.VGG.OUT_FEATURES = ["det", "seg"]
    # Normalisation after every conv: "" (VGG-16 as published; ImageNet weights) or "GN"
    # (GroupNorm, gcd(32, channels) groups; for short from-scratch runs such as the demo).
    _C.MODEL.VGG.NORM = ""
    # Dropout probability after the seg branch's fc6/fc7 convs in training (0 = off).
    _C.MODEL.VGG.SEG_FC_DROPOUT = 0.0
    # Memory (MB) for the outputs of the frozen conv blocks, kept per image so that each
    # (image, flip) is run through them once per process (0 = off). Needs
    # MODEL.BACKBONE.FREEZE_AT 3, 4 or 5; for CPU budgets with conv1-conv5 frozen.
    _C.MODEL.VGG.FROZEN_FEATURE_CACHE_MB = 0
    # Folder where that cache also keeps the features on disk (under a digest of the frozen
    # weights), for the next run on the same images and weights ("" = memory only).
    _C.MODEL.VGG.FROZEN_FEATURE_CACHE_DIR = ""


def _add_r2ios_model_config(_C: CN) -> None:
    # Dropout after each fc ReLU of ROI_BOX_HEAD.NAME "VGGDropoutFCHead" in training (Fast
    # R-CNN's VGG-16 fc6/fc7: 0.5).
    _C.MODEL.ROI_BOX_HEAD.FC_DROPOUT = 0.5
    # ------------------------------------------------------------------------------ R2-IOS
    _C.MODEL.R2IOS = CN()
    # T: recursive iterations in training (paper: 4; 1 = "recursive only in testing").
    _C.MODEL.R2IOS.NUM_ITERATIONS = 4
    # T at test time (paper: 4).
    _C.MODEL.R2IOS.TEST_NUM_ITERATIONS = 4
    # Reversible gate: stage 1 trains without it (False), stage 2 fine-tunes with it (True).
    _C.MODEL.R2IOS.GATE = False
    # Reversible gate at test time: output each proposal's iteration with the best gate score
    # (the paper's R2-IOS). False = its last iteration (Table 2's "recursive_k" rows, "obtained
    # without using the reversible gates").
    _C.MODEL.R2IOS.TEST_GATE = True
    # Gate score at test time: "all" = max over all K+1 classes (paper), "foreground" = over K.
    _C.MODEL.R2IOS.GATE_SCORE = "all"
    # Use the segmentation-aware feature concat(fc7, v) for classification and regression.
    _C.MODEL.R2IOS.SEG_AWARE = True
    # (The mask head is chosen by MODEL.ROI_MASK_HEAD.NAME: "InstanceAwareAEMaskHead" (the
    # paper's autoencoder), "R2IOSConvMaskHead" (v = C, no AE) or "R2IOSFCMaskHead" (two FC
    # 3200 layers, no bottleneck).)

    # Side of the pooled confidence maps and of the predicted masks (paper: 40).
    _C.MODEL.R2IOS.MASK_SIZE = 40
    # Width of the AE bottleneck (paper: 512).
    _C.MODEL.R2IOS.AE_HIDDEN_DIM = 512
    # (not in the paper) The autoencoder's output is added to the confidence maps C,
    # v = C + AE(C): it learns the correction that removes distracting instances, starting
    # from v = C. False = the paper (v = AE(C)).
    _C.MODEL.R2IOS.AE_RESIDUAL = False
    # Feature map of the backbone the mask head scores and pools ("seg" for VGG; "p2" for FPN).
    _C.MODEL.R2IOS.MASK_IN_FEATURES = ["seg"]
    # RoIAlign sampling ratio of the 40x40 mask pooling (0 = adaptive).
    _C.MODEL.R2IOS.MASK_POOLER_SAMPLING_RATIO = 2
    # Weight of the pixel-wise cross-entropy of the mask head.
    _C.MODEL.R2IOS.MASK_LOSS_WEIGHT = 1.0
    # Init std of the mask scoring conv and the AE/fc layers (paper: 0.001).
    _C.MODEL.R2IOS.MASK_INIT_STD = 0.001
    # Backend of the heads' fully connected layers (AE, fc6/fc7, predictor) for CPU float32
    # tensors: "onednn" = torch's bundled oneDNN for the forward and both gradient products
    # (up to ~2.3x torch's BLAS on some CPUs; results equal up to float rounding; torch's
    # F.linear where this torch lacks the op), "torch" = F.linear. No effect on CUDA. The
    # project's trainer and benchmarks put the stock heads' layers on the same backend.
    _C.MODEL.R2IOS.CPU_LINEAR = "onednn"
    # With "onednn", inference (eval mode, no autograd) runs each fully connected weight up to
    # this size (MiB) in oneDNN's blocked layout, a copy made once and kept while the weight
    # is unchanged: ~40 % faster products at the few rows of refinement iterations 2..T, equal
    # up to float rounding; one more copy of those weights in memory. Training (train mode)
    # keeps the plain layout. 32 packs the autoencoder and the predictor at every width, not
    # VGG-16's full-width fc6 (392 MiB) or fc7 (64); 0 = never.
    _C.MODEL.R2IOS.CPU_LINEAR_PACK_MB = 32.0
    # Input gradient of the R2-IOS heads' RoIAlign poolers (box pooler, mask pooler) on CPU:
    # "matmul" = two matrix products per image (RoIAlign is separable into per-box row and
    # column weights), ~3.5x faster alone than torchvision's sample-by-sample backward at the
    # demo's sizes (~1.9x inside a training step), equal up to float rounding, slower where a
    # feature map is large and the samples per bin many (full-width VGG-16 with sampling
    # ratio 2: ~1.3x); "torchvision" = its own.
    # No effect on CUDA or at inference.
    _C.MODEL.R2IOS.CPU_ROI_ALIGN_GRAD = "matmul"
    # Forward of the mask head's RoIAlign on CPU (2-channel scored maps, MASK_SIZE^2 bins):
    # "matmul" = the same separable weights as two matrix products per image and channel for
    # 48 boxes or more (~2x faster than torchvision's per-sample loop at ~200 boxes: every
    # training iteration, the first test iteration), torchvision's below; equal up to float
    # rounding. "torchvision" = its own always. The box pooler (64-512 channels) keeps
    # torchvision's forward, which is faster there.
    _C.MODEL.R2IOS.CPU_MASK_POOL_FORWARD = "matmul"


def _add_training_config(_C: CN) -> None:
    # --- Training aids the paper does not describe (README, "Why the masks did not learn").
    # --- The paper's text: SEG_AWARE_INPUT "logits", SEG_AWARE_SCALE 1, SEG_AWARE_GRAD_SCALE 1,
    # --- CONF_LOSS_WEIGHT 0 (configs/ablations/paper_literal*.yaml).

    # What of v enters the seg-aware feature: "logits" (raw v, unbounded, as the paper's text)
    # or "probs" (per-pixel softmax of v over its 2 channels minus 0.5, in [-0.5, 0.5]; same
    # 3200 dims).
    _C.MODEL.R2IOS.SEG_AWARE_INPUT = "probs"
    # Factor on vec(v) in the seg-aware feature (1.0 = the paper). Its 3200 correlated entries
    # otherwise move the predictor's outputs ~10x faster per step than fc7 does.
    _C.MODEL.R2IOS.SEG_AWARE_SCALE = 0.05
    # Factor on the gradient that the classification and box losses send back into v through
    # the seg-aware feature (1.0 = fully joint, as the paper; 0.0 = v is detached there; the
    # forward pass is unchanged).
    _C.MODEL.R2IOS.SEG_AWARE_GRAD_SCALE = 0.0
    # Weight of a pixel-wise cross-entropy on the pooled confidence maps C (the AE's input),
    # against the same dominant-instance targets as v (0 = off, as the paper).
    _C.MODEL.R2IOS.CONF_LOSS_WEIGHT = 1.0
    # Train as the recursion is tested: background proposals predicted foreground move by the
    # deltas of the predicted class (until predicted background) and are trained as
    # background at every iteration, so the classifier sees refined false positives. False =
    # the paper (background proposals keep their box in training: only GT-class moves).
    _C.MODEL.R2IOS.TRAIN_MOVE_BACKGROUND = False
    # (not in the paper) Label each foreground proposal at every iteration by the box it is
    # classified on: at iteration t >= 2 it counts as background (no box or mask loss) while
    # l_{t-1} overlaps its ground-truth box by less than the foreground IoU of
    # MODEL.ROI_HEADS.IOU_THRESHOLDS, so that a box that drifted off its instance is not
    # trained as confident foreground. False = the paper (labels fixed by l_0).
    _C.MODEL.R2IOS.TRAIN_RELABEL_ITERATIONS = False
    # (not in the paper) Move the foreground proposals in training as at test time: by the
    # deltas of the predicted class (a proposal predicted background keeps its box), instead
    # of by those of the ground-truth class, so that iterations t >= 2 are trained on the
    # boxes they get at test time. The losses are unchanged (ground-truth class and box).
    # False = the paper (l_t from o_{t,g}, g the ground-truth class).
    _C.MODEL.R2IOS.TRAIN_MOVE_FOREGROUND_BY_PREDICTION = False
    # Every this many training iterations, log the gradient norm that each loss term sends into
    # the segmentation branch (the scored stride-8 map) and into v (0 = off).
    _C.MODEL.R2IOS.GRAD_PROBE_PERIOD = 50
    # Init std of the class scores (paper: 0.01) and of the box deltas (paper: 0.001).
    _C.MODEL.R2IOS.CLS_INIT_STD = 0.01
    _C.MODEL.R2IOS.BOX_INIT_STD = 0.001
    # Normaliser of each iteration's mask loss: "fg" = number of sampled foreground RoIs
    # (mean over foreground RoIs and pixels, as Mask R-CNN), "rois" = all sampled RoIs (as
    # the Fast R-CNN box loss).
    _C.MODEL.R2IOS.MASK_LOSS_NORMALIZER = "fg"


def _add_r2ios_test_config(_C: CN) -> None:
    # Test-time speed lever: proposals predicted background leave the loop (outputs identical).
    _C.MODEL.R2IOS.SKIP_BACKGROUND = True
    # Output: "proposal" = one detection per surviving proposal (paper); "per_class" = Fast
    # R-CNN-style per-class detections from the gate's iteration.
    _C.MODEL.R2IOS.OUTPUT_MODE = "proposal"
    # Score of an output: "gate" = its probability at the gate's iteration t' (paper);
    # "mean" = its class's probability averaged over the T test iterations (box and mask
    # still from t'), so that a proposal scored high only after moving ranks lower.
    _C.MODEL.R2IOS.TEST_SCORE = "gate"
    # Test-time budget of iterations 2..T: of the proposals that would go on to the next
    # iteration, one whose refined box overlaps a higher-scoring one of the same image and
    # predicted class by more than this IoU stops and keeps its result so far (0 = off, every
    # moving proposal is refined T times: the paper).
    _C.MODEL.R2IOS.TEST_REFINE_NMS = 0.0
    # Test-time budget of iterations 2..T: at most this many proposals per image go on to the
    # next iteration, highest score first; the others keep their result so far (0 = off).
    _C.MODEL.R2IOS.TEST_REFINE_TOPK = 0
    # NMS on "box" IoU or on "mask" IoU (threshold: MODEL.ROI_HEADS.NMS_THRESH_TEST).
    _C.MODEL.R2IOS.NMS_TYPE = "box"
    # Resample v_{t'} from the frame of l_{t'-1} into the frame of l_{t'} (DESIGN 2.5).
    _C.MODEL.R2IOS.REFRAME_MASK = True
    # Test time: predict each output's mask once more inside its output box l_{t'} (one extra
    # mask-head pass over the final detections) instead of re-framing v_{t'}, which was
    # predicted inside l_{t'-1} and is empty wherever the refinement grew the box. False = the
    # paper's output v_{t'}.
    _C.MODEL.R2IOS.TEST_MASK_FROM_OUTPUT_BOX = False
    # Inference also returns the per-iteration trace (boxes, scores, classes, masks, t') as
    # extra Instances fields, for visualisation and inspection.
    _C.MODEL.R2IOS.TEST_RECORD_TRACE = False
    # Mask probability threshold used when masks are binarised: the output masks (META_ARCHITECTURE
    # R2IOSRCNN pastes them with it; detectron2's GeneralizedRCNN always uses 0.5), mask NMS.
    _C.MODEL.R2IOS.MASK_THRESHOLD = 0.5


def _add_data_and_solver_config(_C: CN) -> None:
    # ----------------------------------------------------------------------- checkpoints
    # Read .pkl weight files (pickle can run code when loaded: only for files you trust).
    _C.MODEL.R2IOS.ALLOW_PICKLE_WEIGHTS = False
    # Skip checkpoint parameters whose shape differs from the model's (with a warning)
    # instead of failing, e.g. to fine-tune on another number of classes.
    _C.MODEL.R2IOS.ALLOW_SHAPE_MISMATCH = False

    # ------------------------------------------------------------------------- proposals
    # One folder of per-image proposal files (<image_id>.npz) per dataset in DATASETS.TRAIN /
    # DATASETS.TEST; empty = take the folder from the dataset's metadata "proposal_dir".
    _C.DATASETS.PROPOSAL_DIRS_TRAIN = ()
    _C.DATASETS.PROPOSAL_DIRS_TEST = ()
    # detectron2 proposal pickles (DATASETS.PROPOSAL_FILES_*) are only read with this opt-in.
    _C.DATASETS.ALLOW_PICKLE_PROPOSALS = False
    # Proposals with a side below this many pixels (original image) are dropped.
    _C.DATASETS.PROPOSAL_MIN_SIZE = 2.0

    # ---------------------------------------------------------------------------- solver
    # "SGD" (the paper's, with SOLVER.MOMENTUM) or "ADAMW" (for short from-scratch runs such as
    # the synthetic demo; betas 0.9/0.999, weight decay SOLVER.WEIGHT_DECAY).
    _C.SOLVER.OPTIMIZER = "SGD"
    # Learning-rate factor for parameters initialised from a pre-trained checkpoint (paper:
    # 1e-4 for pre-trained layers vs 1e-3 for new ones -> 0.1).
    _C.SOLVER.PRETRAINED_LR_FACTOR = 1.0
    # Name prefixes of the parameters that PRETRAINED_LR_FACTOR applies to.
    _C.SOLVER.PRETRAINED_PARAM_PREFIXES = ["backbone.", "roi_heads.box_head."]


def _add_run_config(_C: CN) -> None:
    # ------------------------------------------------ long runs: disk use, several processes
    # Keep only the newest N periodic checkpoints model_<iter>.pth (0 = keep all, as
    # detectron2); the one last_checkpoint names and model_final.pth are never deleted.
    _C.SOLVER.CHECKPOINT_MAX_TO_KEEP = 0
    _C.DIST = CN()
    # Seconds a process waits in a collective operation (gradient all-reduce, barrier, gather)
    # for the others before it fails (torch's default: 1800): bounds the wait on a process
    # that stopped responding.
    _C.DIST.COLLECTIVE_TIMEOUT = 1800
    # Seconds the other processes of a multi-process run get to stop by themselves once one
    # has died, before the launcher kills them and names the lost one.
    _C.DIST.LOST_PROCESS_GRACE = 30
