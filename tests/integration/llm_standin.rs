//! The LM Studio client against an in-process stand-in server on loopback, one scenario per quirk.
