package main

import "github.com/dhvisor/dhvisor/scripts/bench/benchkit"

// The harnesses share their statistics and polling (package benchkit).
type stats = benchkit.Stats

const servePoll = benchkit.ServePoll

var (
	summarise = benchkit.Summarise
	repoRoot  = benchkit.RepoRoot
	readFile  = benchkit.ReadFile
	loadavg   = benchkit.Loadavg
	tail      = benchkit.Tail
	ms        = benchkit.MS
	fmtMS     = benchkit.FmtMS
	verdict   = benchkit.Verdict
	pollUntil = benchkit.PollUntil
	sleepCtx  = benchkit.SleepCtx

	waitServing = benchkit.WaitServing
	servingPID  = benchkit.ServingPID
)
