"""The demo: offline stand-ins for the ImageNet and FLAIR weights and their pretraining corpora."""
