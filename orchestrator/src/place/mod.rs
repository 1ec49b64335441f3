//! Placers: baselines and the Moirai placer.
