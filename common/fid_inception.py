"""The FID Inception network: torchvision's Inception3 (1008 classes, no aux head) with the pooling
changes of the TensorFlow graph `pt_inception-2015-12-05` (average pools that exclude padding, a max
pool in the last block). Its state-dict keys match that file. A module of its own because importing
torchvision takes about two seconds: common.fid imports it only when FID is computed."""
import torch
import torch.nn.functional as F
from torchvision.models import inception


def _avg_pool(x):
    return F.avg_pool2d(x, 3, stride=1, padding=1, count_include_pad=False)  # the TF graph excludes padding


class _BlockA(inception.InceptionA):
    def _forward(self, x):
        b5 = self.branch5x5_2(self.branch5x5_1(x))
        b3 = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
        return [self.branch1x1(x), b5, b3, self.branch_pool(_avg_pool(x))]


class _BlockC(inception.InceptionC):
    def _forward(self, x):
        b7 = self.branch7x7_3(self.branch7x7_2(self.branch7x7_1(x)))
        b7d = x
        for layer in (self.branch7x7dbl_1, self.branch7x7dbl_2, self.branch7x7dbl_3, self.branch7x7dbl_4,
                      self.branch7x7dbl_5):
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
    """Inception3 as in the FID graph; forward(uint8 or [0,1] float images) -> (N, 2048) pool3 features."""

    def __init__(self):
        super().__init__(num_classes=1008, aux_logits=False, init_weights=False)
        self.Mixed_5b, self.Mixed_5c, self.Mixed_5d = _BlockA(192, 32), _BlockA(256, 64), _BlockA(288, 64)
        self.Mixed_6b, self.Mixed_6c = _BlockC(768, 128), _BlockC(768, 160)
        self.Mixed_6d, self.Mixed_6e = _BlockC(768, 160), _BlockC(768, 192)
        self.Mixed_7b, self.Mixed_7c = _BlockE(1280, max_pool=False), _BlockE(2048, max_pool=True)

    def forward(self, x):
        if x.dtype == torch.uint8:
            x = x.float() / 255
        if x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)  # grey PNGs are read as RGB by the FID tools
        x = F.interpolate(x, size=(299, 299), mode="bilinear", align_corners=False)
        x = 2 * x - 1
        for name in ("Conv2d_1a_3x3", "Conv2d_2a_3x3", "Conv2d_2b_3x3", "maxpool1", "Conv2d_3b_1x1", "Conv2d_4a_3x3",
                     "maxpool2", "Mixed_5b", "Mixed_5c", "Mixed_5d", "Mixed_6a", "Mixed_6b", "Mixed_6c", "Mixed_6d",
                     "Mixed_6e", "Mixed_7a", "Mixed_7b", "Mixed_7c"):
            x = getattr(self, name)(x)
        return x.mean((2, 3))
