//! The scenario scripts in `engine/testdata/`, one test each, named after
//! the rule the script shows. See `scenario/mod.rs` for the format and for
//! how to rewrite the expected output after an intended change.

mod scenario;
mod support;

macro_rules! scripts {
    ($($name:ident),* $(,)?) => {
        $(
            #[test]
            fn $name() {
                scenario::run_file(stringify!($name));
            }
        )*

        #[test]
        fn every_script_in_testdata_runs() {
            scenario::assert_all_listed(&[$(stringify!($name)),*]);
        }
    };
}

scripts!(
    election_with_pre_vote,
    check_quorum_leader_steps_down,
    check_quorum_followers_ignore_votes_while_a_leader_is_heard,
    pre_vote_keeps_a_rejoining_node_from_disrupting,
    figure_8_old_terms_commit_only_under_the_current_term,
    read_index_waits_for_the_new_leaders_first_commit,
    lease_reads_need_no_round_while_the_lease_holds,
    leader_transfer_sends_timeout_now_once_caught_up,
    snapshot_to_a_slow_follower_after_compaction,
    on_persisted_after_the_entry_was_overwritten,
    rejected_appends_back_up_a_term_at_a_time,
    inflight_window_pauses_replication,
    a_leader_counts_itself_only_once_its_own_write_is_durable,
    a_wiped_member_votes_again_only_once_repaired,
    a_single_node_commits_on_its_own_fsync,
    a_cluster_of_empty_disks_finds_out_it_is_new,
    a_rejected_append_sends_the_leader_back_to_probing,
    a_lagging_follower_learns_the_commit_index_from_heartbeats,
);
