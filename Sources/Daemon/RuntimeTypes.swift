import Runtime

/// The daemon records containers' inits with the runtime's identity (pid + start time), so
/// adoption after a restart compares exactly what the runtime saved.
public typealias ProcessIdentity = Runtime.ProcessIdentity
