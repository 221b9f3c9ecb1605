"""The training loop and the named pieces it calls: config, prepare, stepper, meter, validation, preemption, calibration, finish."""
