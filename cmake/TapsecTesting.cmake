# Test helpers shared by every folder.
#
# Labels: unit (GoogleTest, no privileges), integration (network namespaces and
# a private dbus-daemon on this kernel, needs root), vm (QEMU guests), fuzz
# (short libFuzzer runs). Each label runs alone: `ctest -L unit`.
#
# A test that cannot run here exits with code 77; ctest reports it as skipped
# (SKIP_RETURN_CODE) and prints the reason the test wrote to stderr.

# tapsec_add_gtest(NAME SOURCES a.cpp b.cpp LIBS lib1 lib2)
function(tapsec_add_gtest name)
  cmake_parse_arguments(T "" "" "SOURCES;LIBS" ${ARGN})
  add_executable(${name} ${T_SOURCES})
  target_link_libraries(${name} PRIVATE ${T_LIBS} GTest::gtest GTest::gtest_main)
  add_test(NAME ${name} COMMAND ${name})
  set_tests_properties(${name} PROPERTIES LABELS unit TIMEOUT 300 SKIP_RETURN_CODE 77)
  tapsec_gtest_report(${name})
endfunction()

# tapsec_gtest_report(TEST): the GoogleTest binary behind TEST writes its
# results to gtest-results/TEST.xml, so scripts/test can count and name the
# cases a binary skipped (GTEST_SKIP) although the binary as a whole passed.
function(tapsec_gtest_report test)
  set_property(TEST ${test} APPEND PROPERTY ENVIRONMENT
               "GTEST_OUTPUT=xml:${CMAKE_BINARY_DIR}/gtest-results/${test}.xml")
endfunction()

# tapsec_add_script_test(NAME LABEL label COMMAND cmd args... [TIMEOUT s])
function(tapsec_add_script_test name)
  cmake_parse_arguments(T "" "LABEL;TIMEOUT" "COMMAND" ${ARGN})
  if(NOT T_TIMEOUT)
    set(T_TIMEOUT 600)
  endif()
  add_test(NAME ${name} COMMAND ${T_COMMAND})
  set_tests_properties(${name} PROPERTIES LABELS ${T_LABEL} TIMEOUT ${T_TIMEOUT} SKIP_RETURN_CODE 77)
endfunction()
