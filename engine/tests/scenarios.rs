//! The scenario scripts in `engine/testdata/`, one test each, named after
//! the rule the script shows. See `scenario/mod.rs` for the format and for
//! how to rewrite the expected output after an intended change.

mod scenario;

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
);
