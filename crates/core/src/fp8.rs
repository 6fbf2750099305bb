//! FP8 E4M3 / E5M2 codecs (OCP FP8): format limits derived from exponent and mantissa bits.
