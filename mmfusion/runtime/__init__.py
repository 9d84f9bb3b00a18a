"""Run-time plumbing of the command-line tools: flags and one-sentence errors
(`cli`, `errors`), the progress line and metric files (`reporting`), SIGTERM
(`preemption`) and glibc's heap setting (`malloc`)."""
