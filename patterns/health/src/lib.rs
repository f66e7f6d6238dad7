//! Health checking: healthy/unhealthy thresholds for active probes, outlier ejection from responses.
#![no_std]
