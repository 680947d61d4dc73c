// Package nat holds service load balancing's tables. So far it builds
// Maglev lookup tables (Maglev): consistent hashing that spreads a
// service's flows over its backends in proportion to their weights and,
// when a backend comes or goes, moves little more than the share that must
// move. The frontend, backend and affinity map codecs and the ServiceTable
// that programs them come with the datapath's service stage.
package nat
