// Package gossip is the cluster membership and health
// dissemination, over hashicorp/memberlist (SWIM with Lifeguard).
//
// Every dhagent runs one Gossip. It publishes its node's compact service
// list (SetLocal) and learns every other node's list and liveness (View),
// so `dhctl status` on any node shows the whole cluster, a change reaches
// every node within a second, and a crashed node is seen dead within 3 s
// (see Timing).
//
// # What travels how
//
//   - Membership and liveness: memberlist's own probes and gossip. NodeMeta
//     (roles, API address, versions) rides in memberlist's alive messages.
//   - A node's service list: a user message, versioned, sent straight to
//     every member when it changes (pushLoop) and broadcast by gossip
//     through a queue of our own (queue.go: memberlist's loses messages).
//     A newer list of a node replaces a queued older one (Invalidates).
//     Receivers apply a list only if its version is newer than what they
//     hold and then relay it once; see queueRelay for why relaying is
//     needed.
//   - Full state: on every push-pull (join, and every PushPullInterval)
//     each side sends all the nodes it knows with their latest list and
//     liveness, merged by version, so a late joiner or a healed partition
//     converges in one exchange.
//   - Key operations: gossip user messages (see keys.go).
//
// # Versions
//
// A list's version is (wall-clock ms << 16 | counter), issued by the node
// itself and never reused: the agent restarting starts above its previous
// run. If the clock went back across a restart, the node notices a peer
// holding a newer version of its own list and moves past it (a hybrid
// logical clock). Stale news therefore never overwrites fresh.
//
// # What memberlist v0.7.0 does and does not tell (checked in its source)
//
//   - EventDelegate: NotifyJoin when a node becomes alive (new, or back from
//     dead/left with a higher incarnation), NotifyLeave when it becomes dead
//     or left, NotifyUpdate when its meta changes. Nothing for suspect,
//     nothing for a refuted suspicion.
//   - Node.State is useless outside MergeDelegate: memberlist's internal
//     nodeState embeds Node but declares its own State field, which shadows
//     Node.State, and only the shadowing field is ever written. So the Node
//     handed to NotifyLeave, and every Node from Members(), says StateAlive,
//     even for a node that left (memberlist issue #293, unmerged PR #321).
//     Members() itself returns alive and suspect nodes alike and omits dead
//     and left ones. No exported API exposes a node's real state.
//   - Therefore: dead vs left comes from our own leave intent: Leave
//     publishes the node's list with a Leaving flag before memberlist's
//     Leave (the way Serf does it), and a node whose last list says Leaving
//     is reported left when memberlist reports it gone, dead otherwise. The
//     flag also travels in push-pull, so late joiners agree.
//   - Suspect comes from the one trace memberlist leaves: its log line
//     "Suspect NAME has failed, no acks received", written by the node
//     whose probe (direct, indirect and TCP fallback) failed. That node
//     reports NAME suspect until NAME acks a probe, publishes, is declared
//     dead, or memberlist's longest suspicion timeout passes. Other nodes,
//     which only received the suspicion by gossip, keep reporting alive until
//     dead: suspect in View is a local observation, a hint for operators,
//     never a basis for decisions.
//
// # Wrong or missing key
//
// With a keyring every packet and stream is AES-GCM encrypted and, with
// GossipVerifyIncoming/Outgoing, nothing unencrypted is sent or accepted.
// A node with a wrong key that tries to join: the peer cannot decrypt the
// push-pull and logs (memberlist) "failed to receive: No installed keys
// could decrypt the message", which we rephrase as a warning naming a
// wrong gossip key; it answers with an error encrypted with its own key,
// which the joiner cannot decrypt either, so the joiner's Join fails with
// "No installed keys could decrypt the message". The join loop turns that
// into "gossip join failed: the cluster uses a different gossip key (check
// KEYFILE)" at error level on every attempt. The intruder never enters
// anyone's member list, so the cluster's view and traffic are untouched;
// its UDP packets, if any, are dropped on decryption. A node without a key
// joining an encrypted cluster gets "remote state is encrypted and
// encryption is not configured", reported as such.
//
// # Goroutines
//
// Start starts one goroutine, the join loop, and memberlist starts its
// own; Shutdown (or cancelling Start's context) stops all of them and
// waits for ours. Leave announces the departure first.
package gossip
