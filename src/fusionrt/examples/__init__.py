"""Examples that embed fusionrt, installed with it: ``python -m fusionrt.examples.service``."""
