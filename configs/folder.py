"""Your own images and masks: DeepLabV3+ / MobileNetV2 on a folder dataset.

    python main.py --config=configs/folder.py --config.data.folder=DIR \
        --workdir=runs/mine
    python main.py --config=configs/folder.py --config.data.folder=DIR \
        --workdir=runs/mine --mode=eval

DIR holds images/<name>.jpg|.jpeg|.png and masks/<name>.png, optionally
classes.txt or classes.csv and splits/{train,val}.txt: see
deeplab_jax/data/folder_builder.py and the README's "Train on your own
data". `--config.data.mask_format` is ids (default), rgb or binary.

The model predicts as many classes as the dataset has (num_classes = 0).
The rest is the reference recipe at a size one GPU trains in hours: batch 8
of 321x321 crops (BatchNorm frozen below 12 images per device, as the
reference fine-tunes it), 20,000 steps, poly LR 0.007; evaluation at OS 16,
single scale. To start from an official model (recommended for small
data), add --config.train.init_from=mnv2_pascal_train_aug (or a .tflite
path): every array whose shape fits is loaded, the classifier is new.

Measured on this 2-core machine (no GPU): the 32 VOC sample images laid out
as a folder with rgb masks score exactly the VOC path's mIoU (a test); the
official float dm0.5 model fine-tuned on "person vs the rest" from the 26
sample train images (its own config with this folder, batch 4, 257 crops,
lr 0.01, inverse-frequency class weights, frozen backbone; the README's
command) raised person IoU on the 6 val images from 0.066 to 0.405 in 300
steps, 108 s of training. No full run of this recipe was made here.
"""

from deeplab_jax.config import default_config


def get_config():
  config = default_config()
  config.data.dataset = 'folder'
  config.model.num_classes = 0  # The dataset's.
  config.data.crop_size = 321
  config.train.batch_size = 8
  config.train.num_steps = 20000
  config.train.eval_every_steps = 2000
  config.eval.output_stride = 16
  config.eval.scales = (1.0,)
  config.eval.flip = False
  return config
